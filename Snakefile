# rsdyn: residual-stream dynamics of a transformer LM as a Snakemake experiment.
# Usage: snakemake --cores all                       (embedded default, config/config.yaml)
#        snakemake --cores 2 --configfile config/smoke.yaml
#        snakemake --profile workflow/profiles/slurm --configfile config/paper.yaml

from snakemake.utils import min_version

min_version("9.20")


configfile: "config/config.yaml"


report: "workflow/report/workflow.rst"


include: "workflow/rules/common.smk"
include: "workflow/rules/model.smk"
include: "workflow/rules/corpus.smk"
include: "workflow/rules/capture.smk"
include: "workflow/rules/unit_stats.smk"
include: "workflow/rules/population.smk"
include: "workflow/rules/reduce.smk"
include: "workflow/rules/teleport.smk"
include: "workflow/rules/jacobian.smk"
include: "workflow/rules/report.smk"
include: "workflow/rules/compare.smk"


rule all:
    input:
        all_outputs(),
    default_target: True
