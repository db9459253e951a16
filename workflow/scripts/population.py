"""Rule population: jPCA and its TME null, and per-unit R against TME -> population.zarr."""

from rsdyn.jobs import setup_job

log = setup_job(snakemake.log[0], "population")  # noqa: F821

from rsdyn.population import run_population  # noqa: E402
from rsdyn.store import write_group  # noqa: E402

params = snakemake.params  # noqa: F821
arrays, attrs = run_population(snakemake.input[0], params.jpca, params.tme, params.fdr_q, log=log)  # noqa: F821
write_group(snakemake.output[0], arrays, attrs=attrs)  # noqa: F821
for condition, groups in arrays.items():
    jpca = groups["jpca"]
    log.info(
        "%s: jpca_ratio %.3f (TME percentile %.1f), TME fits: %d and %d Newton steps",
        condition, float(jpca["jpca_ratio"]), float(jpca["tme_percentile"]),
        int(jpca["tme_iterations"]), int(groups["tme_rotations"]["tme_iterations"]),
    )
log.info("wrote %s", snakemake.output[0])  # noqa: F821
