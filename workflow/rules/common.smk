# Config validation (before any job) and the helpers every rule file uses.
import sys
from pathlib import Path

sys.path.insert(0, str(Path(workflow.basedir) / "src"))

from rsdyn.config import ConfigError, load_schema, resolve_runs

try:
    RUNS = resolve_runs(config, load_schema(Path(workflow.basedir) / "workflow/schemas/config.schema.yaml"))
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
    model="[A-Za-z0-9._-]+",
    shard=r"\d+",
    layer=r"\d+",


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
    from rsdyn.corpus import local_corpus_file

    inputs = {"model": model_dir(wildcards)}
    corpus = RUNS[wildcards.run]["corpus"]
    local = local_corpus_file(corpus["local_candidates"], corpus["split"])
    if local is not None:
        inputs["text"] = local
    return inputs


def all_outputs():
    """Every final output of every run (extended by the stage rule files)."""
    outputs = []
    for run in RUNS:
        outputs += [f"{RESULTS}/{run}/figures/fig{n}.{ext}" for n in (1, 2, 3, 4) for ext in ("pdf", "png")]
        outputs += [f"{RESULTS}/{run}/summary.json"]
    return outputs
