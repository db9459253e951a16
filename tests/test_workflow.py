"""The workflow end to end on the smoke config, with the real SmolLM2 weights."""

from __future__ import annotations

import numpy as np
import pytest
import yaml
import zarr
from conftest import copy_workflow, run_snakemake

pytestmark = pytest.mark.workflow


def test_smoke_run_writes_the_activation_store(smoke_run):
    group = zarr.open_group(str(smoke_run / "results/smoke/activations.zarr"), mode="r")
    for condition in ("original", "shuffled"):
        assert group[condition].shape == (16, 60, 576)
        assert group[condition].dtype == np.float32
        assert group[condition].chunks == (4, 60, 64)  # (capture.sample_chunk of smoke.yaml, 2L, unit_chunk)
        assert group[f"{condition}_ids"].shape[0] == 16
    attrs = dict(group.attrs)
    assert attrs["model_name"] == "smollm2-135m" and attrs["family"] == "llama" and attrs["n_layers"] == 30
    assert len(attrs["texts"]) == 16 and all(100 < len(t) < 500 for t in attrs["texts"])
    ids = group["original_ids"][...]
    shuffled = group["shuffled_ids"][...]
    assert (ids[:, 0] == shuffled[:, 0]).all()
    for row, other in zip(ids, shuffled):
        assert sorted(row[row >= 0]) == sorted(other[other >= 0])
    assert (smoke_run / "results/smoke/logs/capture_activations_shard_0.log").read_text().count("capture original") > 0


@pytest.mark.parametrize(
    "edit,message",
    [
        ({"capture": {"device": "tpu"}}, "capture.device = 'tpu'; allowed values are 'auto', 'cpu', 'cuda'"),
        ({"teleport": {"layers": [0, 31]}}, "teleport.layers [31] do not exist: smollm2-135m has 30 layers"),
        ({"runs": [{"name": "x", "model": {"source": "pypi-gguf", "pypi_key": "smollm2-135m", "family": "gpt2"}}]},
         "family = 'gpt2'; supported families are"),
    ],
)
def test_bad_config_stops_before_any_job(tmp_path, edit, message):
    work = copy_workflow(tmp_path)
    config = yaml.safe_load((work / "config/smoke.yaml").read_text())
    config.update(edit)
    (work / "config/bad.yaml").write_text(yaml.safe_dump(config))
    result = run_snakemake(work, "--cores", "1", "--configfile", "config/bad.yaml", check=False)
    assert result.returncode != 0
    assert message in result.stdout
    assert not (work / "results").exists()


@pytest.mark.parametrize(
    "edit,message",
    [
        ({"runs": [{"name": "x", "model": {"source": "hf", "id": "org/.."}}]}, "model.id = 'org/..' is not a hub id"),
        ({"runs": [{"name": "x", "model": {"source": "local", "path": "resources/.."}}]}, "gives the model folder name '..'"),
        ({"results_dir": ".."}, "results_dir = '..' is a folder above the project folder"),
        ({"results_dir": "/"}, "results_dir = '/' is the file system's root"),
        ({"resources_dir": "/"}, "resources_dir = '/' is the file system's root"),
    ],
)
def test_paths_outside_the_project_stop_before_anything_is_written_or_deleted(tmp_path, edit, message):
    """The workflow's own resources folder (not the shared one linked by copy_workflow)
    holds a marker file that must survive; nothing appears beside the project."""
    work = copy_workflow(tmp_path)
    (work / "resources").unlink()
    (work / "resources" / "models").mkdir(parents=True)
    (work / "resources" / "marker").write_text("keep")
    config = yaml.safe_load((work / "config/smoke.yaml").read_text())
    config.update(edit)
    (work / "config/bad.yaml").write_text(yaml.safe_dump(config))
    before = sorted(path.name for path in tmp_path.iterdir())
    result = run_snakemake(work, "--cores", "1", "--configfile", "config/bad.yaml", check=False)
    assert result.returncode != 0
    assert message in result.stdout
    assert (work / "resources" / "marker").read_text() == "keep"
    assert not (work / "results").exists()
    assert sorted(path.name for path in tmp_path.iterdir()) == before


def test_report_holds_the_five_figures_and_the_summary(smoke_run):
    run_snakemake(smoke_run, "--configfile", "config/smoke.yaml", "--report", "results/report.zip")
    import zipfile

    names = zipfile.ZipFile(smoke_run / "results/report.zip").namelist()
    for expected in ("fig1.png", "fig2.png", "fig3.png", "fig4.png", "fig5.png", "summary.tsv", "run_config.yaml"):
        assert any(name.endswith(expected) for name in names), expected


def test_smoke_run_writes_the_jacobian_store(smoke_run):
    from rsdyn.jacobian.run import read_jacobian

    arrays, attrs = read_jacobian(smoke_run / "results/smoke/jacobian.zarr")
    assert attrs["weights"] == ["trained", "initial", "svd_matched", "norm_matched"]
    assert attrs["n_layers"] == 30 and attrs["d_model"] == 576 and attrs["init_seeds"] == [0, 1]
    assert arrays["sample_indices"].shape == (2,) and arrays["baseline_positions"].shape == (1,)
    for weights, rows in (("trained", 2), ("initial", 2), ("svd_matched", 1), ("norm_matched", 1)):
        assert arrays[weights]["eigenvalues"].shape == (rows, 60, 576)
        assert arrays[weights]["cumulative_effective_rank_entropy"].shape == (rows, 15)
        assert np.isfinite(arrays[weights]["rotation_index"]).all()
    assert (smoke_run / "results/smoke/figures/fig5.png").stat().st_size > 0
    table = (smoke_run / "results/smoke/summary.tsv").read_text()
    assert "jacobian_bottleneck_learned" in table and "jacobian_learned_geometry" in table


def test_three_capture_shards_give_the_same_store_and_summary(smoke_run, tmp_path):
    """capture.shards: 3 plans three capture_shard jobs and one assembly; the store is the
    same bit for bit as the one-shard smoke run's, and so is everything computed from it."""
    from test_slurm import _without_timings

    work = copy_workflow(tmp_path)
    config = yaml.safe_load((work / "config/smoke.yaml").read_text())
    config["capture"]["shards"] = 3
    (work / "config/shards.yaml").write_text(yaml.safe_dump(config))
    run_snakemake(work, "--cores", "2", "--configfile", "config/shards.yaml")
    shards = sorted(p.name for p in (work / "results/smoke/capture").iterdir() if not p.name.startswith("."))  # not the manifests
    assert shards == ["activations_shard_0.zarr", "activations_shard_1.zarr", "activations_shard_2.zarr"]

    def files(store):
        return {p.relative_to(store).as_posix(): p.read_bytes() for p in sorted(store.rglob("*"))
                if p.is_file() and p.name != ".snakemake_timestamp"}

    assert files(work / "results/smoke/activations.zarr") == files(smoke_run / "results/smoke/activations.zarr")
    import json

    summary = [_without_timings(json.loads((root / "results/smoke/summary.json").read_text())) for root in (work, smoke_run)]
    assert summary[0] == summary[1]
