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
    """The model (for its tokenizer) and the first local corpus file that exists."""
    inputs = {"model": model_dir(wildcards)}
    for candidate in RUNS[wildcards.run]["corpus"]["local_candidates"]:
        if Path(candidate).is_file():
            inputs["text"] = candidate
            break
    return inputs


def all_outputs():
    """Every final output of every run (extended by the stage rule files)."""
    outputs = []
    for run in RUNS:
        outputs += [f"{RESULTS}/{run}/figures/fig{n}.{ext}" for n in (1, 2, 3, 4, 5) for ext in ("pdf", "png")]
        outputs += [f"{RESULTS}/{run}/summary.json"]
    if len(RUNS) > 1:
        outputs += [f"{RESULTS}/compare/{name}" for name in ("summary.tsv", "fig_compare.pdf", "fig_compare.png")]
    return outputs
