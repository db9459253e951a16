"""activations.zarr as the data contract says: streamed, chunked in (sample, 2L, unit) tiles,
identical bit for bit whatever the number of capture shards, and nothing left by an
interrupted capture."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
import zarr
from conftest import tiny_llama
from test_models import save_tiny_tokenizer

from rsdyn.capture import capture
from rsdyn.capture import run as capture_run
from rsdyn.capture import settings as capture_settings
from rsdyn.capture.corpus import Corpus, save_corpus
from rsdyn.core.store import read_group

CAPTURE = {"device": "cpu", "dtype": "auto", "max_batch_tokens": 512, "max_batch_size": 4,
           "bucket_by_length": True, "unit_chunk": 8, "sample_chunk": 3, "shards": 1}
MODEL = {"source": "local", "name": "tiny", "path": "unused", "family": "auto"}
N_SEQUENCES = 8  # 3 sample chunks of 3, 3 and 2 rows: the last chunk is partial


def make_corpus(n: int = N_SEQUENCES, seed: int = 0) -> Corpus:
    """Sequences of 4-16 tokens (BOS first) and their position-shuffled twins."""
    rng = np.random.default_rng(seed)
    original = [np.concatenate([[1], rng.integers(3, 29, size=int(length) - 1)]) for length in rng.integers(4, 17, size=n)]
    shuffled = [np.concatenate([seq[:1], rng.permutation(seq[1:])]) for seq in original]

    def padded(rows):
        out = np.full((n, max(len(r) for r in rows)), -1, dtype=np.int32)
        for i, row in enumerate(rows):
            out[i, : len(row)] = row
        return out

    return Corpus(texts=[f"text {i}" for i in range(n)], original_ids=padded(original), shuffled_ids=padded(shuffled),
                  lengths=np.asarray([len(s) for s in original], dtype=np.int32), source="synthetic")


@pytest.fixture
def inputs(tmp_path):
    model_dir = tmp_path / "model"
    tiny_llama(n_layers=3, hidden=32).save_pretrained(model_dir)
    save_tiny_tokenizer(model_dir)
    corpus = make_corpus()
    save_corpus(corpus, tmp_path / "corpus.npz")
    return model_dir, tmp_path / "corpus.npz", corpus


def store_files(path: Path) -> dict[str, bytes]:
    """Every file of a store by relative path, with its bytes."""
    return {p.relative_to(path).as_posix(): p.read_bytes() for p in sorted(path.rglob("*")) if p.is_file()}


def sharded_capture(model_dir, corpus_path, out: Path, shards: int, settings=CAPTURE) -> Path:
    settings = dict(settings, shards=shards)
    paths = []
    for shard in range(shards):
        paths.append(out.parent / f"shards{shards}" / f"shard_{shard}.zarr")
        capture_run.capture_store(str(model_dir), str(corpus_path), str(paths[-1]), settings, MODEL, {"seed": 0}, shard=shard)
    capture_run.assemble_store(paths, str(corpus_path), str(out), capture_settings.recorded_settings(settings), MODEL, {"seed": 0})
    return out


def test_store_layout_chunks_and_attributes(inputs, tmp_path):
    model_dir, corpus_path, corpus = inputs
    out = tmp_path / "activations.zarr"
    capture_run.capture_store(str(model_dir), str(corpus_path), str(out), CAPTURE, MODEL, {"seed": 0})
    group = zarr.open_group(str(out), mode="r")
    for condition in ("original", "shuffled"):
        assert group[condition].shape == (N_SEQUENCES, 6, 32) and group[condition].dtype == np.float32
        assert group[condition].chunks == (3, 6, 8)  # (capture.sample_chunk, 2L, capture.unit_chunk)
        assert group[f"{condition}_ids"].dtype == np.int32
    np.testing.assert_array_equal(group["shuffled_ids"][...], corpus.shuffled_ids)
    attrs = dict(group.attrs)
    assert attrs["n_layers"] == 3 and attrs["d_model"] == 32 and attrs["dtype"] == "float32"
    assert attrs["sublayer_names"][:3] == ["L0.pre_attn", "L0.pre_mlp", "L1.pre_attn"]
    assert attrs["texts"] == corpus.texts and attrs["config"]["capture"] == capture_settings.recorded_settings(CAPTURE)
    assert "shards" not in attrs["config"]["capture"]  # how many jobs wrote it is not part of the store
    arrays = read_group(out)
    assert not np.allclose(arrays["original"], arrays["shuffled"])
    assert np.isfinite(arrays["original"]).all()


def test_chunks_never_exceed_the_array():
    assert capture_settings.store_chunks(16, 60, 576, {"sample_chunk": 256, "unit_chunk": 64}) == (16, 60, 64)
    assert capture_settings.store_chunks(1000, 64, 4096, {"sample_chunk": 256, "unit_chunk": 64}) == (256, 64, 64)
    assert capture_settings.store_chunks(5, 4, 3, {"sample_chunk": 2, "unit_chunk": 64}) == (2, 4, 3)


def test_default_chunks_are_1_to_16_mb_for_smollm2_and_llama_8b():
    from rsdyn.core.schema import load_schema

    schema = load_schema()["definitions"]["capture"]["properties"]
    settings = {"sample_chunk": schema["sample_chunk"]["default"], "unit_chunk": schema["unit_chunk"]["default"]}
    for n_sublayers, d_model in ((60, 576), (64, 4096)):
        chunk = capture_settings.store_chunks(100_000, n_sublayers, d_model, settings)
        assert 2**20 <= np.prod(chunk) * 4 <= 16 * 2**20


def test_shard_ranges_are_runs_of_whole_chunks():
    assert capture_settings.split_samples(8, 3, 3) == [(0, 3), (3, 6), (6, 8)]
    assert capture_settings.split_samples(8, 2, 3) == [(0, 6), (6, 8)]
    assert capture_settings.split_samples(1000, 4, 256) == [(0, 256), (256, 512), (512, 768), (768, 1000)]
    assert capture_settings.split_samples(661, 1, 256) == [(0, 661)]
    for n, shards, chunk in ((100_000, 16, 256), (661, 3, 256), (17, 5, 3)):
        ranges = capture_settings.split_samples(n, shards, chunk)
        assert ranges[0][0] == 0 and ranges[-1][1] == n and len(ranges) == shards
        assert all(a[1] == b[0] for a, b in zip(ranges, ranges[1:]))
        assert all(start % chunk == 0 and stop > start for start, stop in ranges)
    with pytest.raises(capture_settings.CaptureError, match=r"capture.shards = 3, but 16 sequences fill 1 sample chunk\(s\) of capture.sample_chunk = 256"):
        capture_settings.split_samples(16, 3, 256)


def test_capture_with_one_or_three_shards_gives_the_same_store_bit_for_bit(inputs, tmp_path):
    model_dir, corpus_path, _ = inputs
    direct = tmp_path / "direct" / "activations.zarr"
    capture_run.capture_store(str(model_dir), str(corpus_path), str(direct), CAPTURE, MODEL, {"seed": 0})
    one = sharded_capture(model_dir, corpus_path, tmp_path / "one" / "activations.zarr", shards=1)
    three = sharded_capture(model_dir, corpus_path, tmp_path / "three" / "activations.zarr", shards=3)
    two = sharded_capture(model_dir, corpus_path, tmp_path / "two" / "activations.zarr", shards=2)
    reference = store_files(direct)
    assert any(name.startswith("original/c/2/") for name in reference)  # the partial last chunk is there
    for other in (one, two, three):
        assert store_files(other) == reference
    # the assembly linked the shards' chunk files, it did not copy them
    shard_chunk = tmp_path / "three" / "shards3" / "shard_2.zarr" / "original" / "c" / "0" / "0" / "1"
    assert os.path.samefile(shard_chunk, three / "original" / "c" / "2" / "0" / "1")


def test_assembly_rejects_shards_that_do_not_tile_the_samples(inputs, tmp_path):
    model_dir, corpus_path, _ = inputs
    settings = dict(CAPTURE, shards=3)
    paths = [tmp_path / f"shard_{k}.zarr" for k in range(3)]
    for shard in (0, 2):
        capture_run.capture_store(str(model_dir), str(corpus_path), str(paths[shard]), settings, MODEL, shard=shard)
    with pytest.raises(capture_settings.CaptureError, match="do not tile the samples: a shard starts at 6 where 3 was expected"):
        capture_run.assemble_store([paths[0], paths[2]], str(corpus_path), str(tmp_path / "out.zarr"), settings, MODEL)
    assert not (tmp_path / "out.zarr").exists()


def test_blocks_are_written_while_the_next_ones_are_computed_and_memory_stays_bounded(inputs, tmp_path, monkeypatch):
    """Pipelined: block 1 is computed while block 0 is still with the writer (held here at
    a gate until block 1 has started), and when block k + 3 starts, block k is written
    (one block computed, one waiting, one being written: memory holds three blocks)."""
    import threading

    model_dir, corpus_path, _ = inputs
    out = tmp_path / "activations.zarr"
    real_forward, real_write = capture._forward_rows, capture_run._ConditionWriter.__call__
    gate, seen, writers = threading.Event(), [], set()

    def written() -> list[str]:
        temporaries = list(tmp_path.glob(".tmp-*-activations.zarr"))
        return sorted(p.relative_to(temporaries[0]).as_posix() for p in temporaries[0].rglob("c/*/0/0")) if temporaries else []

    def spying(model, recorder, stage, sequences, **kwargs):
        seen.append(written())
        if len(seen) == 2:
            gate.set()  # block 1 has started while block 0 waits at the gate
        return real_forward(model, recorder, stage, sequences, **kwargs)

    def gated(self, first, pending):
        writers.add(threading.current_thread().name)
        if first == 0 and self.condition == "original":
            assert gate.wait(timeout=60), "block 1 was never started while block 0 was being written"
        return real_write(self, first, pending)

    monkeypatch.setattr(capture, "_forward_rows", spying)
    monkeypatch.setattr(capture_run._ConditionWriter, "__call__", gated)
    capture_run.capture_store(str(model_dir), str(corpus_path), str(out), CAPTURE, MODEL)
    assert seen[0] == [] and seen[1] == []  # block 0 not yet written when block 1 starts
    blocks = [f"{condition}/c/{block}/0/0" for condition in ("original", "shuffled") for block in range(3)]
    for call in range(3, len(seen)):
        assert set(blocks[: call - 2]) <= set(seen[call]), f"block {call - 3} not written when block {call} started"
    assert writers == {"rsdyn-capture-writer"}
    assert not [t for t in threading.enumerate() if t.name == "rsdyn-capture-writer"]


def test_interrupted_streamed_capture_leaves_no_store_and_reruns(inputs, tmp_path, monkeypatch):
    """Killed after some blocks are written (SIGTERM becomes SystemExit under
    raise_on_sigterm): nothing that looks complete, no temporary; a rerun completes."""
    model_dir, corpus_path, _ = inputs
    out = tmp_path / "results" / "activations.zarr"
    real = capture._forward_rows
    calls = {"n": 0}

    def dies_in_the_shuffled_condition(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 5:  # blocks 0-2 of original and block 0 of shuffled are written
            assert list(out.parent.glob(".tmp-*"))  # the partial store exists, hidden
            raise SystemExit(143)
        return real(*args, **kwargs)

    monkeypatch.setattr(capture, "_forward_rows", dies_in_the_shuffled_condition)
    with pytest.raises(SystemExit):
        capture_run.capture_store(str(model_dir), str(corpus_path), str(out), CAPTURE, MODEL)
    assert not out.exists() and list(out.parent.iterdir()) == []
    monkeypatch.setattr(capture, "_forward_rows", real)
    capture_run.capture_store(str(model_dir), str(corpus_path), str(out), CAPTURE, MODEL)
    assert np.isfinite(read_group(out)["shuffled"]).all()


def test_a_temporary_left_by_a_killed_shard_is_removed_by_the_rerun(inputs, tmp_path):
    """SIGKILL leaves the hidden temporary behind; the next run of the job removes it."""
    model_dir, corpus_path, _ = inputs
    out = tmp_path / "shard_0.zarr"
    stale = tmp_path / ".tmp-999999-shard_0.zarr"
    zarr.open_group(str(stale), mode="w").create_array("original", shape=(3, 6, 32), chunks=(3, 6, 8), dtype="float32")
    capture_run.capture_store(str(model_dir), str(corpus_path), str(out), dict(CAPTURE, shards=3), MODEL, shard=0)
    assert not stale.exists() and zarr.open_group(str(out), mode="r")["original"].shape == (3, 6, 32)


def test_capture_of_one_condition_only(inputs, tmp_path):
    model_dir, corpus_path, _ = inputs
    out = sharded_capture(model_dir, corpus_path, tmp_path / "cae_activations.zarr", shards=2)
    both = read_group(out)
    settings = dict(CAPTURE, shards=2)
    paths = [tmp_path / f"only_{k}.zarr" for k in range(2)]
    for shard in range(2):
        capture_run.capture_store(str(model_dir), str(corpus_path), str(paths[shard]), settings, MODEL, shard=shard, conditions=["original"])
    capture_run.assemble_store(paths, str(corpus_path), str(tmp_path / "only.zarr"), settings, MODEL)
    only = read_group(tmp_path / "only.zarr")
    assert sorted(only) == ["original", "original_ids"]
    np.testing.assert_array_equal(only["original"], both["original"])
    with pytest.raises(capture_settings.CaptureError, match="allowed: original, shuffled"):
        capture_run.capture_store(str(model_dir), str(corpus_path), str(tmp_path / "x.zarr"), CAPTURE, MODEL, conditions=["scrambled"])


def test_reading_a_snakemake_directory_output_does_not_warn(tmp_path):
    """Snakemake puts `.snakemake_timestamp` inside directory() outputs; reading the store
    must neither warn about it nor return it."""
    import warnings

    from rsdyn.core.store import write_group

    store = tmp_path / "out.zarr"
    write_group(store, {"values": np.arange(6.0).reshape(2, 3)}, attrs={})
    (store / ".snakemake_timestamp").touch()
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        arrays = read_group(store)
    assert list(arrays) == ["values"]
    np.testing.assert_array_equal(arrays["values"], np.arange(6.0).reshape(2, 3))
