"""Rule pca: PCA of the pooled sublayer states -> pca.zarr."""

from rsdyn.core.jobs import setup_job

setup_job(snakemake.log[0], "pca")  # noqa: F821

from rsdyn.geometry.run import run_pca  # noqa: E402

run_pca(snakemake.input[0], snakemake.output[0], snakemake.params.settings, snakemake.params.bootstrap, snakemake.params.seed)  # noqa: F821
