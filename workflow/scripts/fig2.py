"""Rule fig2: rotations of single units against their nulls, and population rotations (jPCA)."""

from rsdyn.jobs import setup_job
from rsdyn.plots.fig1 import save_figure
from rsdyn.plots.fig2 import make_fig2
from rsdyn.store import open_group, read_group

log = setup_job(snakemake.log[0])
unit_stats = read_group(snakemake.input.unit_stats)
population = read_group(snakemake.input.population)
model = open_group(snakemake.input.unit_stats).attrs.get("model_name", snakemake.wildcards.run)
figure = make_fig2(
    unit_stats,
    population,
    n_example_units=snakemake.params.settings["n_example_units"],
    title=f"Fig. 2 - {model}",
)
save_figure(figure, [snakemake.output.pdf, snakemake.output.png], dpi=snakemake.params.settings["dpi"])
log.info("wrote %s, %s", snakemake.output.pdf, snakemake.output.png)
