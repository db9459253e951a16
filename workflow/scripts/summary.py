"""Rule summary: summary.json, its table, and the run's resolved configuration."""

from pathlib import Path

import yaml

from rsdyn.jobs import setup_job
from rsdyn.store import atomic_file
from rsdyn.summary import build_summary, collect_rows, write_summary, write_table

log = setup_job(snakemake.log[0])
settings = snakemake.params.settings
rows = collect_rows(
    snakemake.input.fig1,
    snakemake.input.unit_stats,
    snakemake.input.pca,
    Path(snakemake.input.cae) / "embedding.zarr",
    snakemake.input.teleport,
    snakemake.input.population,
    snakemake.input.jacobian,
    settings["summary"],
)
summary = build_summary(snakemake.params.run, snakemake.input.activations, rows, settings["summary"])
write_summary(summary, snakemake.output.json)
write_table(summary, snakemake.output.table)
with atomic_file(snakemake.output.config) as temp:
    Path(temp).write_text(yaml.safe_dump(settings, sort_keys=False))
log.info("wrote %d summary rows (%d with a verdict)", len(rows), sum(1 for row in rows.values() if row.get("verdict")))
