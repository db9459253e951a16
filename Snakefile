# rsdyn: residual-stream dynamics of a transformer LM as a Snakemake experiment.
# Usage: snakemake --profile workflow/profiles/default                        (embedded default, config/config.yaml)
#        snakemake --profile workflow/profiles/default --configfile config/smoke.yaml
#        snakemake --profile workflow/profiles/slurm --configfile config/paper.yaml
#        snakemake verify --cores 1    (check every output against its checksums; delete what is damaged)

from snakemake.utils import min_version

min_version("9.20")


configfile: "config/config.yaml"


report: "workflow/report/workflow.rst"


# One rule file per package of rsdyn (workflow/rules/<stage>.smk <-> src/rsdyn/<stage>/).
include: "workflow/rules/common.smk"
include: "workflow/rules/models.smk"
include: "workflow/rules/capture.smk"
include: "workflow/rules/units.smk"
include: "workflow/rules/population.smk"
include: "workflow/rules/cae.smk"
include: "workflow/rules/geometry.smk"
include: "workflow/rules/jacobian.smk"
include: "workflow/rules/report.smk"


rule all:
    input:
        all_outputs(),
    default_target: True
