"""Checksums written with every output and checked on read: each kind of damage of the
issue (bytes changed inside the converted model, a truncated CSV, a deleted or truncated
chunk, a corrupted zarr.json, a truncated corpus.npz, a damaged chunk shared by hard
link between a capture shard and the assembled store) is named with its file and the
command that repairs it; `python -m rsdyn.verify` deletes exactly what is damaged."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import zarr

from rsdyn.capture.corpus import Corpus, CorpusError, load_corpus, save_corpus
from rsdyn.core.manifest import DamagedOutputError, check_output, describe, manifest_path, problems
from rsdyn.core.store import (
    StoreError,
    atomic_path,
    create_streamed_array,
    describe_read_failure,
    link_chunks,
    open_group,
    read_group,
    streamed_group,
    write_group,
)
from rsdyn.units.layer_stats import layer_stats_from_arrays, read_layer_stats
from rsdyn.units.settings import CONDITIONS
from rsdyn.verify import main as verify_main
from rsdyn.verify import verify


def layer_table(path: Path, n_sublayers: int = 6) -> Path:
    acts = np.random.default_rng(0).standard_normal((8, n_sublayers, 5))
    table = layer_stats_from_arrays({condition: acts for condition in CONDITIONS}, 0.1)
    with atomic_path(path) as temp:
        table.to_csv(temp, index=False)
    return path


def truncate(path: Path, fraction: float = 1 / 3) -> None:
    data = path.read_bytes()
    path.write_bytes(data[: int(len(data) * fraction)])


def test_a_manifest_lists_sizes_checksums_and_rows_but_not_chunk_files(tmp_path):
    store = write_group(tmp_path / "s.zarr", {"a": np.arange(12.0).reshape(3, 4), "g": {"b": np.ones(5)}}, chunks={"a": (1, 4)})
    manifest = json.loads(manifest_path(store).read_text())
    assert sorted(manifest["files"]) == ["a/zarr.json", "g/b/zarr.json", "g/zarr.json", "zarr.json"]
    table = layer_table(tmp_path / "layer_stats.csv")
    entry = json.loads(manifest_path(table).read_text())
    assert entry["rows"] == {".": 2 * (6 + 5)} and entry["files"]["."]["size"] == table.stat().st_size
    assert describe(table) == entry


def test_every_chunk_carries_a_crc32c(tmp_path):
    store = write_group(tmp_path / "s.zarr", {"a": np.arange(12.0)})
    codecs = [codec["name"] for codec in json.loads((store / "a" / "zarr.json").read_text())["codecs"]]
    assert codecs == ["bytes", "zstd", "crc32c"]


def test_a_truncated_csv_fails_its_reader_with_the_file_and_the_repair(tmp_path):
    table = layer_table(tmp_path / "layer_stats.csv")
    size = table.stat().st_size
    truncate(table)
    with pytest.raises(DamagedOutputError) as info:
        read_layer_stats(table, 6)
    assert str(info.value) == (
        f"{table} is damaged ({table.stat().st_size} bytes where {size} were written); "
        f"repair it with `rm -r {table}`, then run snakemake again."
    )


def test_a_truncated_csv_without_a_manifest_is_still_refused(tmp_path):
    """A table written before manifests: its rows are checked against the sublayer count."""
    table = layer_table(tmp_path / "layer_stats.csv")
    manifest_path(table).unlink()
    assert len(read_layer_stats(table, 6)) == 22
    lines = table.read_text().splitlines()
    truncate(table)  # the last line is cut in the middle of a row
    with pytest.raises(ValueError, match=r"layer_stats\.csv is incomplete: row 9 lacks its transition values; repair it with `rm -r "):
        read_layer_stats(table, 6)
    table.write_text("\n".join(lines[:12]) + "\n")  # whole rows: the 11 of the first condition
    with pytest.raises(ValueError, match=r"layer_stats\.csv is incomplete: it has no rows of condition 'shuffled'; repair it with `rm -r "):
        read_layer_stats(table, 6)
    table.write_text("\n".join(lines[:4]) + "\n")
    with pytest.raises(ValueError, match=r"condition 'original' has 3 sublayer and 0 transition rows where 6 and 5 are expected"):
        read_layer_stats(table, 6)


def test_bytes_changed_inside_a_model_folder_are_named(tmp_path):
    """The issue's case: 2 MB zeroed inside model.safetensors (here a smaller file)."""
    with atomic_path(tmp_path / "models" / "tiny") as temp:
        temp.mkdir()
        (temp / "config.json").write_text("{}")
        (temp / "model.safetensors").write_bytes(np.random.default_rng(0).bytes(1 << 20))
    model = tmp_path / "models" / "tiny"
    check_output(model)
    with open(model / "model.safetensors", "r+b") as handle:
        handle.seek(1000)
        handle.write(bytes(2000))
    with pytest.raises(DamagedOutputError) as info:
        check_output(model)
    assert str(info.value) == (
        f"{model / 'model.safetensors'} is damaged (its checksum (CRC-32C) differs from the one written at creation: "
        f"the bytes changed); repair it with `rm -r {model}`, then run snakemake again."
    )


def test_a_corrupted_zarr_json_is_named(tmp_path):
    store = write_group(tmp_path / "unit_stats.zarr", {"original": {"mi_kde": np.ones((3, 4))}})
    meta = store / "original" / "mi_kde" / "zarr.json"
    text = meta.read_text()
    meta.write_text(text[:20] + text[40:])
    with pytest.raises(DamagedOutputError, match=rf"^{meta} is damaged \(.*\); repair it with `rm -r {store}`, then run snakemake again\.$"):
        open_group(store)
    manifest_path(store).unlink()  # a store written before manifests: the JSON error is named
    with pytest.raises(StoreError) as info:
        read_group(store)
    assert str(info.value).startswith(f"{meta} is damaged (JSONDecodeError: ")
    assert str(info.value).endswith(f"the store's metadata cannot be read; repair it with `rm -r {store}`, then run snakemake again.")


def corpus(path: Path) -> Path:
    ids = np.array([[1, 5, 6, 7], [1, 8, 9, -1]], dtype=np.int32)
    save_corpus(Corpus(["a b c", "d e"], ids, ids[:, ::-1].copy(), np.array([4, 3], dtype=np.int32), "test"), path)
    return path


def test_a_truncated_corpus_is_named(tmp_path):
    path = corpus(tmp_path / "corpus.npz")
    assert load_corpus(path).texts == ["a b c", "d e"]
    truncate(path, 0.5)
    with pytest.raises(DamagedOutputError, match=rf"^{path} is damaged \(\d+ bytes where \d+ were written\); repair it with `rm -r {path}`"):
        load_corpus(path)
    manifest_path(path).unlink()
    with pytest.raises(CorpusError) as info:
        load_corpus(path)
    assert str(info.value) == (
        f"{path} is damaged and cannot be read (BadZipFile: File is not a zip file); "
        f"repair it with `rm -r {path}`, then run snakemake again."
    )


def assembled(tmp_path: Path) -> tuple[Path, Path]:
    """A capture shard store and an assembled store whose chunk files are hard links to it."""
    data = np.random.default_rng(1).standard_normal((4, 3, 8)).astype(np.float32)
    (tmp_path / "capture").mkdir(parents=True)
    with streamed_group(tmp_path / "capture" / "activations_shard_0.zarr") as group:
        create_streamed_array(group, "original", data.shape, (2, 3, 4))[...] = data
    shard = tmp_path / "capture" / "activations_shard_0.zarr"
    with streamed_group(tmp_path / "activations.zarr") as group:
        target = create_streamed_array(group, "original", data.shape, (2, 3, 4))
        link_chunks(zarr.open_group(str(shard), mode="r")["original"], target, (0, 0, 0))
    return shard, tmp_path / "activations.zarr"


def test_a_damaged_chunk_shared_with_a_shard_names_both_outputs(tmp_path):
    shard, store = assembled(tmp_path)
    chunk = store / "original" / "c" / "1" / "0" / "1"
    assert os.stat(chunk).st_ino == os.stat(shard / "original" / "c" / "1" / "0" / "1").st_ino
    truncate(chunk, 0.5)
    with pytest.raises(Exception) as info:
        read_group(store)
    assert describe_read_failure(info.value, [store]) == (
        f"{store}: chunk c/1/0/1 of array 'original' cannot be read (its CRC-32C checksum does not match its bytes); "
        f"the file is corrupt: repair it with `rm -r {store} {shard}`, then run snakemake again."
    )


def test_a_damaged_shard_chunk_is_never_linked_again(tmp_path):
    shard, store = assembled(tmp_path)
    chunk = shard / "original" / "c" / "0" / "0" / "0"
    data = bytearray(chunk.read_bytes())
    data[5] ^= 0xFF  # same size, one byte changed
    chunk.write_bytes(bytes(data))
    with pytest.raises(StoreError) as info, streamed_group(tmp_path / "again.zarr") as group:
        target = create_streamed_array(group, "original", (4, 3, 8), (2, 3, 4))
        link_chunks(zarr.open_group(str(shard), mode="r")["original"], target, (0, 0, 0))
    assert str(info.value).startswith(f"{chunk} is damaged (its CRC-32C checksum does not match its bytes), so it cannot be linked")
    assert f"repair it with `rm -r {shard} {store}`" in str(info.value)
    assert not (tmp_path / "again.zarr").exists()


def run_folder(tmp_path: Path) -> Path:
    run = tmp_path / "results" / "smoke"
    shard, store = assembled(run)
    layer_table(run / "layer_stats.csv")
    corpus(run / "corpus.npz")
    write_group(run / "unit_stats.zarr", {"original": {"mi_kde": np.ones((3, 4))}})
    return run


def test_verify_finds_nothing_in_an_intact_run(tmp_path, capsys):
    run = run_folder(tmp_path)
    report = verify([run], resources=None)
    assert report.damaged == {} and report.unsealed == []
    assert report.chunks == 2 * 2 * 2 + 1  # two stores of 2 x 1 x 2 chunks, one chunk of mi_kde
    assert verify_main([str(run), "--resources", str(tmp_path / "resources")]) == 0
    assert "0 damaged file(s)" in capsys.readouterr().out


@pytest.mark.parametrize(
    "damage,deleted",
    [
        (lambda run: truncate(run / "layer_stats.csv"), ["layer_stats.csv"]),
        (lambda run: (run / "unit_stats.zarr/original/mi_kde/c/0/0").unlink(), ["unit_stats.zarr"]),
        (lambda run: truncate(run / "activations.zarr/original/c/0/0/1", 0.5), ["activations.zarr", "capture/activations_shard_0.zarr"]),
        (lambda run: (run / "unit_stats.zarr/original/zarr.json").write_text("{"), ["unit_stats.zarr"]),
        (lambda run: truncate(run / "corpus.npz", 0.5), ["corpus.npz"]),
    ],
    ids=["truncated csv", "deleted chunk", "truncated shared chunk", "corrupted zarr.json", "truncated npz"],
)
def test_verify_deletes_exactly_the_damaged_outputs(tmp_path, damage, deleted, capsys):
    run = run_folder(tmp_path)
    damage(run)
    before = {path.name for path in run.iterdir()} | {path.name for path in (run / "capture").iterdir()}
    assert verify_main([str(run), "--dry-run"]) == 1
    assert all((run / name).exists() for name in deleted)
    assert verify_main([str(run)]) == 0
    out = capsys.readouterr().out
    for name in deleted:
        assert not (run / name).exists() and not manifest_path(run / name).exists()
        assert f"deleted: {run / name}" in out
    after = {path.name for path in run.iterdir()} | {path.name for path in (run / "capture").iterdir()}
    gone = {Path(name).name for name in deleted} | {manifest_path(run / name).name for name in deleted}
    assert before - after == gone
    assert verify([run], resources=None).damaged == {}


def test_verify_checks_the_runs_model(tmp_path):
    run = run_folder(tmp_path)
    (run / "activations.zarr" / "zarr.json").write_text(json.dumps({**json.loads((run / "activations.zarr" / "zarr.json").read_text()),
                                                                  "attributes": {"model_name": "tiny"}}))
    manifest_path(run / "activations.zarr").unlink()  # the attributes changed on purpose
    with atomic_path(tmp_path / "resources" / "models" / "tiny") as temp:
        temp.mkdir()
        (temp / "model.safetensors").write_bytes(b"x" * 1000)
    (tmp_path / "resources" / "models" / "tiny" / "model.safetensors").write_bytes(b"y" * 1000)
    report = verify([run], resources=tmp_path / "resources")
    assert list(report.damaged) == [tmp_path / "resources" / "models" / "tiny" / "model.safetensors"]
    assert report.unsealed == [run / "activations.zarr"]


def test_a_job_checks_its_inputs_before_it_starts(tmp_path):
    """Every job compares its inputs with their manifests first (setup_job), so that a
    reader without its own check (here a bare pandas read) never sees the damage."""
    table = layer_table(tmp_path / "layer_stats.csv")
    truncate(table)
    script = tmp_path / "job.py"
    script.write_text(textwrap.dedent(f"""
        import types
        snakemake = types.SimpleNamespace(input=[{str(table)!r}])
        from rsdyn.core.jobs import setup_job
        setup_job({str(tmp_path / 'logs' / 'fig1_summary.log')!r})
        import pandas
        pandas.read_csv({str(table)!r}).iloc[40]
    """))
    result = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, timeout=300)
    assert result.returncode != 0
    assert result.stderr.strip().splitlines()[-1] == (
        f"[fig1_summary] failed: {table} is damaged ({problems(table)[0][1]}); repair it with `rm -r {table}`, then run snakemake again."
    )
    assert isinstance(pd.read_csv(table), pd.DataFrame)
