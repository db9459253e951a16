"""The pipelined capture (issue 19.1) on the CPU: the CUDA code path (states gathered in a
device block, copied to the host in one transfer) gives the values of the direct path bit
for bit; the writer thread writes what a serial capture computes; an error in the writer,
KeyboardInterrupt and SIGTERM leave no store, no temporary and no thread behind."""

from __future__ import annotations

import os
import signal
import threading

import numpy as np
import pytest
from conftest import tiny_gemma3, tiny_llama
from test_capture_store import CAPTURE, MODEL, inputs, make_corpus, store_files  # noqa: F401 - inputs is a fixture

from rsdyn.capture import capture
from rsdyn.capture import run as capture_run
from rsdyn.capture.capture import capture_blocks, capture_last_token
from rsdyn.capture.pipeline import BlockStage
from rsdyn.core.store import raise_on_sigterm, read_group, streamed_group
from rsdyn.core.threads import BackgroundWriter

WRITER = "rsdyn-capture-writer"


def writer_threads() -> list[threading.Thread]:
    return [thread for thread in threading.enumerate() if thread.name == WRITER]


def sequences(n: int = 11, seed: int = 0) -> list[np.ndarray]:
    return make_corpus(n, seed).rows("original")


@pytest.mark.parametrize("builder", [tiny_llama, tiny_gemma3], ids=["llama", "gemma3"])
def test_the_staged_path_gives_the_direct_values_bit_for_bit(builder):
    model, rows = builder(), sequences()
    options = {"max_batch_tokens": 40, "max_batch_size": 3}
    direct = capture_last_token(model, rows, staged=False, **options)
    staged = capture_last_token(model, rows, staged=True, **options)
    assert direct.dtype == staged.dtype == np.float32
    assert direct.tobytes() == staged.tobytes()
    blocks = [(0, 4), (4, 9), (9, 11)]
    for staged_flag in (False, True):
        pieces = [pending.wait().copy() for _, pending in capture_blocks(model, rows, blocks, staged=staged_flag, **options)]
        serial = np.concatenate([capture_last_token(model, rows[a:b], staged=False, **options) for a, b in blocks])
        assert np.concatenate(pieces).tobytes() == serial.tobytes()


def test_every_block_is_its_own_array():
    """A block handed to the writer is never overwritten by the next one."""
    model, rows = tiny_llama(), sequences()
    pending = [p for _, p in capture_blocks(model, rows, [(0, 5), (5, 10)], staged=False)]
    first, second = pending[0].wait(), pending[1].wait()
    assert not np.shares_memory(first, second)
    np.testing.assert_array_equal(first, capture_last_token(model, rows[:5]))


def test_a_cuda_stage_must_be_staged():
    with pytest.raises(ValueError, match="staged=False is for the CPU only"):
        BlockStage("cuda", staged=False)


def test_the_store_holds_what_a_serial_capture_computes(inputs, tmp_path):  # noqa: F811 - fixture
    """capture_store (writer thread) = block-by-block capture_last_token (no thread), and the
    staged (CUDA) path writes the same bytes."""
    model_dir, corpus_path, corpus = inputs
    out = tmp_path / "activations.zarr"
    capture_run.capture_store(str(model_dir), str(corpus_path), str(out), CAPTURE, MODEL)
    model, family, _, _, pad = capture_run._load(str(model_dir), CAPTURE, MODEL)
    blocks = [(0, 3), (3, 6), (6, 8)]
    options = {"max_batch_tokens": CAPTURE["max_batch_tokens"], "max_batch_size": CAPTURE["max_batch_size"], "pad_token": pad}
    arrays = read_group(out)
    for condition in ("original", "shuffled"):
        rows = corpus.rows(condition)
        serial = np.concatenate([capture_last_token(model, rows[a:b], **options) for a, b in blocks])
        assert arrays[condition].tobytes() == serial.tobytes()
    staged = tmp_path / "staged.zarr"
    with streamed_group(staged) as group:
        capture_run.capture_into(group, model, corpus, 0, len(corpus.texts), CAPTURE, family, pad, len(corpus.texts), staged=True)
    def chunks(path):
        return {name: data for name, data in store_files(path).items() if name.startswith(("original/c/", "shuffled/c/"))}

    assert len(chunks(out)) == 2 * 3 * 4 and chunks(staged) == chunks(out)  # 3 sample x 4 unit chunks per condition


def leaves_nothing(tmp_path, out) -> None:
    assert not out.exists()
    assert not list(tmp_path.glob(".tmp-*")), "a temporary store was left behind"
    assert not writer_threads(), "the writer thread outlived the capture"


def test_an_error_in_the_writer_thread_surfaces_and_leaves_no_store(inputs, tmp_path, monkeypatch):  # noqa: F811
    model_dir, corpus_path, _ = inputs
    out = tmp_path / "activations.zarr"
    real = capture_run._ConditionWriter.__call__
    calls = []

    def failing(self, first, pending):
        calls.append((self.condition, first, threading.current_thread().name))
        if len(calls) == 2:
            raise OSError("No space left on device (simulated in the writer)")
        return real(self, first, pending)

    monkeypatch.setattr(capture_run._ConditionWriter, "__call__", failing)
    with pytest.raises(OSError, match="No space left on device"):
        capture_run.capture_store(str(model_dir), str(corpus_path), str(out), CAPTURE, MODEL)
    assert calls[1][2] == WRITER and len(calls) == 2  # nothing written after the error
    leaves_nothing(tmp_path, out)


def test_non_finite_states_fail_in_the_writer_with_the_sample(inputs, tmp_path, monkeypatch):  # noqa: F811
    model_dir, corpus_path, _ = inputs
    out = tmp_path / "activations.zarr"
    real = capture_run._ConditionWriter.__call__

    def poisoned(self, first, pending):
        states = pending.wait()
        if first == 3:
            states[1, 0, 0] = np.nan
        return real(self, first, type(pending)(states))

    monkeypatch.setattr(capture_run._ConditionWriter, "__call__", poisoned)
    with pytest.raises(FloatingPointError, match=r"The original capture has non-finite values \(sample 4, compute dtype torch.float32\)"):
        capture_run.capture_store(str(model_dir), str(corpus_path), str(out), CAPTURE, MODEL)
    leaves_nothing(tmp_path, out)


@pytest.mark.parametrize("how", ["KeyboardInterrupt", "SIGTERM"])
def test_an_interrupt_while_blocks_are_in_the_writer_cleans_up(inputs, tmp_path, monkeypatch, how):  # noqa: F811
    """Ctrl-C, or SIGTERM (a node drain, scancel) under raise_on_sigterm, while block 2 is
    computed and blocks 0-1 are with the writer: no store, no temporary, no thread."""
    model_dir, corpus_path, _ = inputs
    out = tmp_path / "activations.zarr"
    real = capture._forward_rows
    calls = {"n": 0}

    def interrupted(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 3:
            assert writer_threads() and list(tmp_path.glob(".tmp-*"))
            if how == "SIGTERM":
                os.kill(os.getpid(), signal.SIGTERM)
                for _ in range(1000):  # the handler runs between two bytecodes of this thread
                    pass
                raise AssertionError("SIGTERM was not turned into SystemExit")
            raise KeyboardInterrupt
        return real(*args, **kwargs)

    monkeypatch.setattr(capture, "_forward_rows", interrupted)
    previous = signal.getsignal(signal.SIGTERM)
    raise_on_sigterm()
    try:
        with pytest.raises(SystemExit if how == "SIGTERM" else KeyboardInterrupt):
            capture_run.capture_store(str(model_dir), str(corpus_path), str(out), CAPTURE, MODEL)
    finally:
        signal.signal(signal.SIGTERM, previous)
    leaves_nothing(tmp_path, out)


# --------------------------------------------------------------------------- the writer


def test_the_writer_runs_jobs_in_order_on_its_own_thread():
    done, threads = [], set()

    def job(value):
        threads.add(threading.current_thread().name)
        done.append(value)

    with BackgroundWriter(depth=2, name="test-writer") as writer:
        for value in range(20):
            writer.submit(job, value)
    assert done == list(range(20)) and threads == {"test-writer"}


def test_the_writer_holds_at_most_depth_waiting_jobs():
    gate, started = threading.Event(), threading.Event()
    submitted = []

    def slow(value):
        started.set()
        gate.wait(timeout=60)

    with BackgroundWriter(depth=1) as writer:
        writer.submit(slow, 0)
        assert started.wait(timeout=60)
        writer.submit(slow, 1)  # waits in the queue
        blocked = threading.Thread(target=lambda: (writer.submit(slow, 2), submitted.append(2)))
        blocked.start()
        blocked.join(timeout=0.3)
        assert blocked.is_alive() and not submitted  # the third submit waits for a free slot
        gate.set()
        blocked.join(timeout=60)
    assert submitted == [2]


def test_a_job_error_is_raised_at_the_next_submit_and_later_jobs_are_skipped():
    ran = []

    def fail():
        raise ValueError("bad block")

    with pytest.raises(ValueError, match="bad block"):
        with BackgroundWriter(depth=1) as writer:
            writer.submit(fail)
            for value in range(1000):
                writer.submit(ran.append, value)
    assert len(ran) < 1000


def test_a_job_error_is_raised_when_the_block_ends():
    def fail():
        raise ValueError("last block")

    with pytest.raises(ValueError, match="last block"):
        with BackgroundWriter() as writer:
            writer.submit(fail)


def test_a_failing_caller_drops_the_waiting_jobs():
    """The caller fails while a job runs and four wait: the four never run."""
    ran, gate = [], threading.Event()
    writer = BackgroundWriter(depth=4)

    def open_gate_once_cancelled():
        while not writer._cancelled.is_set():
            threading.Event().wait(0.01)
        gate.set()

    opener = threading.Thread(target=open_gate_once_cancelled)
    opener.start()
    with pytest.raises(RuntimeError, match="caller failed"):
        with writer:
            writer.submit(gate.wait, 60)
            for value in range(4):
                writer.submit(ran.append, value)
            raise RuntimeError("caller failed")
    opener.join(timeout=60)
    assert ran == []
    with pytest.raises(RuntimeError, match="outside its with block"):
        writer.submit(ran.append, 99)
