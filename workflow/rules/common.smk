# Config validation (before any job) and the helpers every rule file uses.
import sys
from pathlib import Path

sys.path.insert(0, str(Path(workflow.basedir) / "src"))

from snakemake.utils import update_config

from rsdyn.core.resources import set_rule_memory
from rsdyn.core.schema import ConfigError, load_schema, typed_overrides
from rsdyn.config import resolve_runs

# `--config section="{key: value}"` changes one nested value: Snakemake reads the nested
# values as strings, so they get their YAML types back before validation.
update_config(config, typed_overrides(workflow.config_settings.config))



def profile_mem_mb(rule):
    """The mem_mb the profile gives ``rule`` (set-resources, else default-resources) when it
    is a number (an expression such as ``4000 * attempt`` is known only per job: None)."""
    settings = workflow.resource_settings
    for resources in (settings.overwrite_resources.get(rule), settings.default_resources):
        try:
            value = resources.get("mem_mb") if resources is not None else None
            if value is not None and not value.is_evaluable() and value.value is not None:
                return int(value.value)
        except (AttributeError, TypeError, ValueError):
            continue
    return None


# The config's memory checks compare with what a job of each memory-bound rule will have:
# the profile's mem_mb for that rule, else this machine's memory (rsdyn.core.resources).
for _rule in ("capture_shard", "unit_stats_shard", "unit_stats_gather", "teleport_layer"):
    set_rule_memory(_rule, profile_mem_mb(_rule))

try:
    RUNS = resolve_runs(config, load_schema(Path(workflow.basedir) / "workflow/schemas/config.schema.yaml"), Path.cwd())
except ConfigError as err:
    raise WorkflowError(str(err)) from None

MODELS = {}
for _settings in RUNS.values():
    _model = _settings["model"]
    if MODELS.setdefault(_model["name"], _model) != _model:
        raise WorkflowError(
            f"Invalid config: two runs name their model {_model['name']!r} with different "
            "settings; give each distinct model its own model.name."
        )

RESULTS = config["results_dir"]
RESOURCES = config["resources_dir"]


wildcard_constraints:
    run="|".join(RUNS),
    model=r"(?!\.{1,2}$)[A-Za-z0-9._-]+",
    shard=r"\d+",
    layer=r"\d+",


#: the settings sections that each stage's outputs are computed from (its own and those
#: upstream of it). A rule's ``lineage`` param holds them all, so that a rule, and
#: everything downstream of it, reruns when any setting its inputs were computed with
#: changes, even when the upstream job that should have rewritten them failed.
LINEAGE = {
    "corpus": ("model", "corpus"),
    "capture": ("model", "corpus", "capture"),
    "unit_stats": ("model", "corpus", "capture", "unit_stats"),
    "layer_stats": ("model", "corpus", "capture", "layer_stats"),
    "pca": ("model", "corpus", "capture", "pca"),
    "cae": ("model", "corpus", "capture", "cae"),
    "teleport": ("model", "corpus", "capture", "pca", "teleport"),
    "population": ("model", "corpus", "capture", "jpca", "tme"),
    "jacobian": ("model", "corpus", "capture", "jacobian"),
}


def lineage(*stages, leave_out=()):
    """Input function for params: every settings section the outputs of ``stages`` were
    computed from (LINEAGE), without the section keys named in ``leave_out``
    (``"section.key"``: settings that change no number, as figure arrows)."""

    def sections(wildcards):
        settings = RUNS[wildcards.run]
        names = sorted({name for stage in stages for name in LINEAGE[stage]})
        out = {name: dict(settings[name]) for name in names}
        for dotted in leave_out:
            section, key = dotted.split(".", 1)
            out.get(section, {}).pop(key, None)
        return out

    return sections


def setting(section, key=None):
    """Input function for params: a run's whole settings section, or one key of it."""
    if key is None:
        return lambda wildcards: RUNS[wildcards.run][section]
    return lambda wildcards: RUNS[wildcards.run][section][key]


def model_dir(wildcards):
    """The converted model directory of a run."""
    return f"{RESOURCES}/models/{RUNS[wildcards.run]['model']['name']}"


def run_file(name):
    """Input function: a file under the run's results folder."""
    return lambda wildcards: f"{RESULTS}/{wildcards.run}/{name}"


def corpus_inputs(wildcards):
    """The model (for its tokenizer) and the first existing local file of the run's
    corpus.split (none: the corpus rule loads the split from the hub)."""
    from rsdyn.capture.corpus import local_corpus_file

    inputs = {"model": model_dir(wildcards)}
    corpus = RUNS[wildcards.run]["corpus"]
    local = local_corpus_file(corpus["local_candidates"], corpus["split"])
    if local is not None:
        inputs["text"] = local
    return inputs


#: the stores of the data contract: targets of `rule all` too, so that a store deleted
#: after the fact (a forced rerun killed half way) is rebuilt by the next plain run,
#: with everything downstream of it, instead of the run counting as complete without it
STORES = (
    "corpus.npz", "activations.zarr", "unit_stats.zarr", "layer_stats.csv", "pca.zarr", "cae", "teleport.zarr",
    "jacobian.zarr",
)


def all_outputs():
    """Every final output of every run (extended by the stage rule files)."""
    outputs = []
    for run in RUNS:
        outputs += [f"{RESULTS}/{run}/{store}" for store in STORES]
        outputs += [f"{RESULTS}/{run}/figures/fig{n}.{ext}" for n in (1, 2, 3, 4, 5) for ext in ("pdf", "png")]
        outputs += [f"{RESULTS}/{run}/summary.json", f"{RESULTS}/{run}/population.zarr"]
    if len(RUNS) > 1:
        outputs += [f"{RESULTS}/compare/{name}" for name in ("summary.tsv", "fig_compare.pdf", "fig_compare.png")]
    if any(settings.get("control") for settings in RUNS.values()):
        outputs += [f"{RESULTS}/compare/controls.md"]
    return outputs


# `snakemake verify --cores 1`: check every run's outputs and its converted model against
# the checksums written with them and delete what is damaged, so that the next plain
# `snakemake` rebuilds exactly that (rsdyn.verify; the same as `python -m rsdyn.verify`).
rule verify:
    params:
        paths=lambda wildcards: [f"{RESULTS}/{run}" for run in RUNS] + [f"{RESOURCES}/models/{name}" for name in MODELS],
        resources=RESOURCES,
    localrule: True
    conda:
        "../../envs/rsdyn.yaml"
    script:
        "../scripts/verify.py"
