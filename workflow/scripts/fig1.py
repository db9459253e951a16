"""Rule fig1: density, continuity, velocity and MI over depth."""

import pandas as pd

from rsdyn.jobs import setup_job
from rsdyn.plots.fig1 import make_fig1, save_figure
from rsdyn.store import open_group, read_group

log = setup_job(snakemake.log[0])
unit_stats = read_group(snakemake.input.unit_stats)
model = open_group(snakemake.input.unit_stats).attrs.get("model_name", snakemake.wildcards.run)
figure = make_fig1(unit_stats, pd.read_csv(snakemake.input.layer_stats), title=f"Fig. 1 - {model}")
save_figure(figure, [snakemake.output.pdf, snakemake.output.png], dpi=snakemake.params.settings["dpi"])
log.info("wrote %s, %s", snakemake.output.pdf, snakemake.output.png)
