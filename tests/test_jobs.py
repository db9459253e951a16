"""What a job shows at the terminal: a throttled progress line, and the cause of a failure last."""

from __future__ import annotations

import io
import subprocess
import sys
import textwrap

import pytest

from rsdyn.core import jobs


@pytest.fixture
def fake_terminal(monkeypatch):
    """A job's terminal as a StringIO and a clock the test advances."""
    screen = io.StringIO()
    clock = {"now": 1000.0}
    monkeypatch.setitem(jobs._JOB, "terminal", screen)
    monkeypatch.setitem(jobs._JOB, "name", "capture")
    monkeypatch.setattr(jobs.time, "monotonic", lambda: clock["now"])
    return screen, clock


def test_progress_prints_one_line_per_interval_and_one_at_the_end(fake_terminal):
    screen, clock = fake_terminal
    bar = jobs.progress(total=105, desc="capture original", unit="seq", file=io.StringIO(), mininterval=0)
    for _ in range(105):
        clock["now"] += 1.0  # one second per sequence: a line every PROGRESS_INTERVAL_S
        bar.update(1)
    bar.close()
    lines = screen.getvalue().splitlines()
    assert len(lines) == 105 // jobs.PROGRESS_INTERVAL_S + 1
    assert all(line.startswith("[capture] capture original: ") for line in lines)
    assert lines[0].startswith(f"[capture] capture original: {int(jobs.PROGRESS_INTERVAL_S)}/105 seq after ")
    assert lines[-1].startswith("[capture] capture original: 105/105 seq after ")


def test_progress_does_not_repeat_the_last_line_when_it_closes(fake_terminal):
    screen, clock = fake_terminal
    bar = jobs.progress(total=2, desc="cae epochs", unit="epoch", file=io.StringIO(), mininterval=0)
    for _ in range(2):
        clock["now"] += jobs.PROGRESS_INTERVAL_S
        bar.update(1)
    bar.close()
    assert [line.split(" after ")[0] for line in screen.getvalue().splitlines()] == [
        "[capture] cae epochs: 1/2 epoch", "[capture] cae epochs: 2/2 epoch"]


def test_progress_outside_a_job_is_a_plain_bar(monkeypatch):
    monkeypatch.setitem(jobs._JOB, "terminal", None)
    log = io.StringIO()
    assert list(jobs.progress(range(3), desc="x", file=log)) == [0, 1, 2]
    assert "3/3" in log.getvalue()


def run_job(tmp_path, body: str) -> subprocess.CompletedProcess:
    script = tmp_path / "job.py"
    script.write_text(textwrap.dedent(f"""
        from rsdyn.core.jobs import setup_job
        log = setup_job({str(tmp_path / 'logs' / 'corpus.log')!r})
        log.info("starting")
    """) + textwrap.dedent(body))
    return subprocess.run([sys.executable, str(script)], capture_output=True, text=True, timeout=300)


def test_a_failed_job_prints_its_cause_last_on_the_terminal(tmp_path):
    result = run_job(tmp_path, """
        from rsdyn.capture.corpus import CorpusError
        raise CorpusError("The corpus file x.raw is not UTF-8 text (byte 3: invalid start byte); fix it.")
    """)
    assert result.returncode != 0
    cause = "The corpus file x.raw is not UTF-8 text (byte 3: invalid start byte); fix it."
    assert result.stderr.strip().splitlines()[-1] == f"[corpus] failed: {cause}"
    log = (tmp_path / "logs" / "corpus.log").read_text()
    assert "Traceback (most recent call last)" in log and log.strip().splitlines()[-1] == f"ERROR: {cause}"


def test_an_error_without_a_telling_type_keeps_its_type(tmp_path):
    result = run_job(tmp_path, "{}['original']\n")
    assert result.stderr.strip().splitlines()[-1] == "[corpus] failed: KeyError: 'original'"


def test_a_job_never_waits_for_an_answer(tmp_path):
    """A library's question (transformers asks "run the custom code? [y/N]") reads EOF at
    once instead of waiting at the terminal, even when the terminal would answer "y"."""
    script = tmp_path / "job.py"
    script.write_text(textwrap.dedent(f"""
        from rsdyn.core.jobs import setup_job
        setup_job({str(tmp_path / 'logs' / 'model.log')!r})
        try:
            input("Do you wish to run the custom code? [y/N] ")
        except EOFError:
            print("no answer")
        else:
            print("answered")
    """))
    result = subprocess.run([sys.executable, str(script)], input="y\n", capture_output=True, text=True, timeout=300)
    assert result.stdout.strip().endswith("[y/N] no answer")


def test_pca_and_population_print_progress_lines(fake_terminal, tmp_path):
    """The two long jobs that printed nothing at the terminal (issue 20)."""
    from rsdyn.geometry.run import pca_arrays
    from rsdyn.population.population import population_steps
    from rsdyn.population.run import population_arrays
    from rsdyn.population.settings import resolve_windows
    from rsdyn.units import unit_stats as us

    screen, _ = fake_terminal
    store = us.write_synthetic_store(tmp_path / "activations.zarr", 20, 4, 8, unit_chunk=4)
    pca_arrays(store, {"n_components": 4, "solver": "auto", "condition": "original"}, n_resamples=5)
    population_arrays(store, {"k": 4, "windows": None}, {"n_surrogates": 3, "unit_surrogates": 5, "seed": 0}, 0.05)
    lines = screen.getvalue().splitlines()
    assert any(line.startswith("[capture] pca per sublayer: 8/8 sublayer after ") for line in lines), lines
    fits = 2 * population_steps(len(resolve_windows(None, 8)))  # two conditions
    assert any(line.startswith(f"[capture] population jPCA and TME fits: {fits}/{fits} fit after ") for line in lines), lines
