"""The whole default DAG from an empty results/ on N cores (model already converted).

Copies the workflow to a temporary folder (resources/ linked, so the converted model is
reused), runs `snakemake --cores N`, and reports the wall time and the per-rule split
from the rules' `benchmark:` files. Target: <= 20 minutes on 2 quiet cores (issue 20).
Writes benchmarks/results/end_to_end.json; ``--keep DIR`` keeps the run's results/ there
(for the README's generated blocks and figures).

    python benchmarks/end_to_end.py [--cores 2] [--configfile config/config.yaml] [--keep DIR]
"""

from __future__ import annotations

import argparse
import csv
import shutil
import subprocess
import sys
import tempfile
import time
from collections import defaultdict
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tests"))

from common import write_report  # noqa: E402
from conftest import copy_workflow, snakemake_env  # noqa: E402


def rule_seconds(benchmark_dir: Path) -> dict[str, float]:
    """Seconds per rule (summed over its jobs) from Snakemake benchmark TSVs."""
    totals: dict[str, float] = defaultdict(float)
    for path in sorted(benchmark_dir.glob("*.tsv")):
        rule = path.stem.split(".")[0]
        rule = rule.rsplit("_", 1)[0] if rule.startswith("unit_stats_shard") else rule
        with open(path) as handle:
            rows = list(csv.DictReader(handle, delimiter="\t"))
        totals[rule] += float(rows[-1]["s"])
    return dict(totals)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cores", type=int, default=2)
    parser.add_argument("--configfile", default="config/config.yaml")
    parser.add_argument("--out", default=str(REPO / "benchmarks/results/end_to_end.json"))
    parser.add_argument("--keep", help="copy the run's results/ folder here afterwards")
    args = parser.parse_args()

    with tempfile.TemporaryDirectory() as scratch:
        work = copy_workflow(Path(scratch))
        prepare = [sys.executable, "-m", "snakemake", "--cores", str(args.cores), "--configfile", args.configfile]
        # Convert the model first (not timed): the figure of merit starts from a converted model.
        env = snakemake_env(work)  # every job runs the copied code
        subprocess.run([*prepare, "--until", "model"], cwd=work, check=True, capture_output=True, env=env)
        start = time.perf_counter()
        result = subprocess.run(prepare, cwd=work, capture_output=True, text=True, env=env)
        wall = time.perf_counter() - start
        if result.returncode != 0:
            raise SystemExit(result.stdout[-4000:] + result.stderr[-4000:])
        runs = [p for p in (work / "results").iterdir() if p.is_dir()]
        per_rule = {run.name: rule_seconds(run / "benchmarks") for run in runs}
        if args.keep:
            shutil.copytree(work / "results", args.keep, symlinks=True, dirs_exist_ok=True)
    report = {"cores": args.cores, "configfile": args.configfile, "wall_seconds": wall,
              "per_rule_seconds": per_rule, "target_seconds": 1200}
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    write_report(report, args.out)
    print(f"whole DAG on {args.cores} cores: {wall:.0f} s (target <= 1200 s)")
    for run, rules in per_rule.items():
        for rule, seconds in sorted(rules.items(), key=lambda item: -item[1]):
            print(f"  {run:>16} {rule:<18} {seconds:7.1f} s")


if __name__ == "__main__":
    main()
