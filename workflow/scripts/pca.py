"""Rule pca: PCA of the pooled sublayer states -> pca.zarr."""

from rsdyn.jobs import setup_job

log = setup_job(snakemake.log[0], "pca")  # noqa: F821

from rsdyn.pca import pca_attrs, run_pca  # noqa: E402
from rsdyn.store import write_group  # noqa: E402

settings = snakemake.params.settings  # noqa: F821
bootstrap = (snakemake.params.bootstrap, snakemake.params.seed)  # noqa: F821
attrs = pca_attrs(snakemake.input[0], settings, *bootstrap)  # noqa: F821
log.info("PCA of %s (%s solver, K = %d, %d resamples)", snakemake.input[0], attrs["solver"], settings["n_components"], bootstrap[0])  # noqa: F821
arrays = run_pca(snakemake.input[0], settings, *bootstrap)  # noqa: F821
write_group(snakemake.output[0], arrays, attrs=attrs)  # noqa: F821
log.info("pooled variance in %d components: %.4f", settings["n_components"], arrays["explained_variance_ratio"].sum())
