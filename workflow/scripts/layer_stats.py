"""Rule layer_stats: norms, density, cosine and velocity per sublayer / transition."""

from rsdyn.jobs import setup_job
from rsdyn.layer_stats import layer_stats
from rsdyn.store import atomic_path

log = setup_job(snakemake.log[0])
table = layer_stats(snakemake.input[0], snakemake.params.settings["density_threshold"])
with atomic_path(snakemake.output[0]) as temp:
    table.to_csv(temp, index=False)
log.info("wrote %s (%d rows)", snakemake.output[0], len(table))
