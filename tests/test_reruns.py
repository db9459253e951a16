"""What reruns when: dry runs on a finished smoke run after one config change."""

from __future__ import annotations

import re

import pytest
import yaml
from conftest import FIGURES, run_snakemake

pytestmark = pytest.mark.workflow

JOB_HEADER = re.compile(r"^(?:local)?rule (\w+):$")
WILDCARDS = re.compile(r"^\s+wildcards: (.*)$")


def planned_jobs(output: str) -> list[tuple[str, dict]]:
    """(rule, wildcards) of every job a dry run lists."""
    jobs: list[tuple[str, dict]] = []
    for line in output.splitlines():
        header = JOB_HEADER.match(line.strip())
        if header:
            jobs.append((header.group(1), {}))
            continue
        wildcards = WILDCARDS.match(line)
        if wildcards and jobs:
            jobs[-1][1].update(dict(item.split("=", 1) for item in wildcards.group(1).split(", ")))
    return jobs


def dry_run_after(workdir, edit) -> list[tuple[str, dict]]:
    """Write the smoke config changed by ``edit`` and return the jobs a dry run plans."""
    config = yaml.safe_load((workdir / "config/smoke.yaml").read_text())
    edit(config)
    (workdir / "config/edited.yaml").write_text(yaml.safe_dump(config))
    result = run_snakemake(workdir, "--dry-run", "--cores", "1", "--configfile", "config/edited.yaml")
    return planned_jobs(result.stdout)


def rules_of(jobs) -> set[str]:
    return {rule for rule, _ in jobs} - {"all"}


def test_no_change_means_nothing_to_do(smoke_run):
    assert rules_of(dry_run_after(smoke_run, lambda c: None)) == set()


def test_teleport_horizon_reruns_no_forward(smoke_run):
    """arrow_sublayers is the metrics' horizon: the gather recomputes them, no layer reruns."""
    jobs = dry_run_after(smoke_run, lambda c: c["teleport"].update(arrow_sublayers=2))
    assert rules_of(jobs) == {"teleport_gather", "summary"} | FIGURES


def test_summary_bootstrap_reruns_the_summaries_and_the_pca_bootstrap(smoke_run):
    """pca.zarr holds the bootstrap of the PCA rows, so PCA and the teleport layers that
    read pca.zarr rerun too; nothing before them."""
    jobs = dry_run_after(smoke_run, lambda c: c.setdefault("summary", {}).update(bootstrap=50))
    assert rules_of(jobs) == {"pca", "teleport_layer", "teleport_gather", "fig1_summary", "summary"} | FIGURES


def test_teleport_grid_reruns_only_teleport_and_what_follows(smoke_run):
    jobs = dry_run_after(smoke_run, lambda c: c["teleport"].update(grid_n=4))
    assert rules_of(jobs) == {"teleport_layer", "teleport_gather", "summary"} | FIGURES


def test_n_shuffles_reruns_only_unit_stats_shards_and_what_follows(smoke_run):
    jobs = dry_run_after(smoke_run, lambda c: c["unit_stats"].update(n_shuffles=21))
    assert rules_of(jobs) == {"unit_stats_shard", "unit_stats_gather", "fig1_summary", "summary"} | FIGURES


def test_n_samples_reruns_everything_from_the_corpus_on(smoke_run):
    jobs = dry_run_after(smoke_run, lambda c: c["corpus"].update(n_samples=15))
    rules = rules_of(jobs)
    assert "model" not in rules
    assert {"corpus", "capture_shard", "capture", "unit_stats_shard", "unit_stats_gather", "layer_stats", "pca", "cae",
            "teleport_layer", "teleport_gather", "jacobian", "fig1", "fig2", "fig3", "fig4", "fig5", "fig1_summary", "summary"} <= rules


def test_second_run_adds_only_its_own_jobs(smoke_run):
    def add_run(config):
        config["runs"].append({"name": "smoke-b", "model": dict(config["runs"][0]["model"]), "corpus": {"seed": 1}})

    jobs = dry_run_after(smoke_run, add_run)
    assert jobs and all(wildcards.get("run") == "smoke-b" for rule, wildcards in jobs if rule not in ("all", "model", "compare"))
    assert "model" not in rules_of(jobs)
    assert "compare" in rules_of(jobs)  # two runs: the cross-run comparison joins them


def test_tme_surrogates_rerun_only_the_population_stage_and_what_follows(smoke_run):
    jobs = dry_run_after(smoke_run, lambda c: c.setdefault("tme", {}).update(n_surrogates=11))
    assert rules_of(jobs) == {"population", "summary"} | FIGURES


def test_jacobian_samples_rerun_only_the_jacobian_stage_and_what_follows(smoke_run):
    jobs = dry_run_after(smoke_run, lambda c: c["jacobian"].update(n_samples=1))
    assert rules_of(jobs) == {"jacobian", "summary"} | FIGURES
