"""The ``model`` section of a run: its checks and defaults, and the model's shape (layer
count, width) where the config can know it without loading weights (the PyPI table or a
converted ``config.json``). Imports no torch: the config imports it before any job."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from rsdyn.core.paths import NAME_RULE, is_name
from rsdyn.core.schema import ConfigError
from rsdyn.models.adapters import UnsupportedModelError, adapter_for
from rsdyn.models.registry import (
    PYPI_GGUF_MODELS,
    architecture_model_type,
    architecture_problem,
    config_file_value,
    context_length,
    layer_count,
    local_model_problem,
    model_width,
)

SECTIONS = ("model",)


@dataclass(frozen=True)
class ModelShape:
    """What the config knows of a model's shape before it is loaded (None: not yet known)."""

    n_layers: int | None = None
    d_model: int | None = None
    context: int | None = None  # the longest sequence in tokens (max_position_embeddings)


def check_model(model: dict, key: str, resources_dir: str = "resources") -> None:
    """Check a run's ``model`` section and fill its defaults (``name``, ``pypi_key``,
    ``family``, ``revision``) in place; ConfigError naming ``key`` (``runs[i].model``).

    Weights: ``random`` keeps ``weights``, ``init_seed`` (and ``architecture``) and its
    default name says so (:func:`default_model_name`); a trained model's section drops
    ``weights`` and ``init_seed``, so that it reads as it did before they existed.
    ``requantise`` (one more dose of a GGUF's quantisation noise) likewise keeps
    ``requantise`` and ``requantise_seed`` and names the folder apart
    (:func:`requantised_model_name`), and a section without it drops both."""
    check_weights(model, key)
    explicit_name = model.get("name")
    source = model["source"]
    if source == "pypi-gguf":
        pypi_key = model.get("pypi_key") or (explicit_name if model["weights"] == "trained" else None)
        if pypi_key not in PYPI_GGUF_MODELS:
            raise ConfigError(
                f"Invalid config: {key}.pypi_key = {pypi_key!r}; allowed values are "
                f"{', '.join(sorted(PYPI_GGUF_MODELS))}."
            )
        model.setdefault("pypi_key", pypi_key)
        model.setdefault("name", pypi_key)
    elif source == "hf":
        if not model.get("id"):
            raise ConfigError(f"Invalid config: {key}.id is required when source is 'hf' (a hub id such as meta-llama/Llama-3.1-8B).")
        parts = model["id"].split("/")
        if len(parts) > 2 or not all(is_name(part) for part in parts):
            raise ConfigError(
                f"Invalid config: {key}.id = {model['id']!r} is not a hub id (owner/name, where {NAME_RULE})."
            )
        model.setdefault("name", model["id"].rstrip("/").split("/")[-1])
        _check_name(model, key, "id")
    elif source == "local":
        if not model.get("path"):
            raise ConfigError(f"Invalid config: {key}.path is required when source is 'local'.")
        model.setdefault("name", Path(model["path"]).name)
        _check_name(model, key, "path")
    check_requantise(model, key)
    if model["weights"] == "random" and not explicit_name:
        model["name"] = default_model_name(model)
    if model["requantise"] and not explicit_name:
        model["name"] = requantised_model_name(model)
    if source == "local" and not (Path(resources_dir) / "models" / model["name"]).is_dir():  # still to be converted
        problem = local_model_problem(model["path"])
        if problem:
            raise ConfigError(f"Invalid config: {key}.path = {model['path']!r} {problem}.")
    model.setdefault("family", "auto")
    model.setdefault("revision", "main")
    if model["family"] != "auto":
        try:
            adapter_for(model["family"])
        except UnsupportedModelError as err:
            raise ConfigError(f"Invalid config: {key}.family = {model['family']!r}; {str(err).split(': ', 1)[1]}") from None
    if model["weights"] == "trained":
        del model["weights"], model["init_seed"]
    if not model["requantise"]:
        del model["requantise"], model["requantise_seed"]


def check_weights(model: dict, key: str) -> None:
    """Fill ``weights`` (trained) and ``init_seed`` (0) and check ``architecture``: only
    with random weights, a config.json of a supported family."""
    model.setdefault("weights", "trained")
    model.setdefault("init_seed", 0)
    architecture = model.get("architecture")
    if architecture is None:
        return
    if model["weights"] != "random":
        raise ConfigError(
            f"Invalid config: {key}.architecture is set but {key}.weights = {model['weights']!r}; an architecture "
            "replaces the source's only with weights: random (trained weights fit only their own architecture)."
        )
    problem = architecture_problem(architecture)
    if problem:
        raise ConfigError(f"Invalid config: {key}.architecture = {architecture!r} {problem}.")
    family = model.get("family", "auto")
    family = architecture_model_type(architecture) if family == "auto" else family
    try:
        adapter_for(family)
    except UnsupportedModelError as err:
        raise ConfigError(f"Invalid config: {key}.architecture = {architecture!r} has model_type {family!r}; {str(err).split(': ', 1)[1]}") from None


def is_gguf_source(model: Mapping) -> bool:
    """Whether the weights come from a GGUF file (a PyPI-table entry, or a local .gguf)."""
    return model["source"] == "pypi-gguf" or (model["source"] == "local" and str(model.get("path", "")).endswith(".gguf"))


def check_requantise(model: dict, key: str) -> None:
    """Fill ``requantise`` (false) and ``requantise_seed`` (0); ConfigError when one more
    dose of quantisation noise is asked of weights that are not a GGUF's trained ones."""
    model.setdefault("requantise", False)
    model.setdefault("requantise_seed", 0)
    if not model["requantise"]:
        return
    if model["weights"] != "trained":
        raise ConfigError(
            f"Invalid config: {key}.requantise is true but {key}.weights = {model['weights']!r}; one more dose of "
            "quantisation noise applies to trained GGUF weights only."
        )
    if not is_gguf_source(model):
        raise ConfigError(
            f"Invalid config: {key}.requantise is true but the weights are not a GGUF file; it needs source "
            "'pypi-gguf', or source 'local' with a path ending in .gguf."
        )


def requantised_model_name(model: Mapping) -> str:
    """The folder name of a re-quantised model when ``model.name`` is not given: the
    source's name and ``-requant`` (``-requant-s{seed}`` for a seed other than 0):
    ``smollm2-135m-requant``."""
    seed = int(model.get("requantise_seed", 0))
    return f"{model['name']}-requant" + (f"-s{seed}" if seed else "")


def default_model_name(model: Mapping) -> str:
    """The folder name of a random-weights model when ``model.name`` is not given: the
    source's name, the architecture file's stem when there is one, then ``random-s{seed}``
    (``smollm2-135m-random-s0``, ``smollm2-135m-llama-3.1-8b-random-s0``)."""
    parts = [model["name"]]
    if model.get("architecture"):
        parts.append(Path(model["architecture"]).stem)
    return "-".join([*parts, f"random-s{model['init_seed']}"])


def _check_name(model: dict, key: str, origin: str) -> None:
    """ConfigError when the model folder name taken from ``model[origin]`` cannot be a
    folder name (``org/..`` or ``<dir>/..`` would make the model's folder resources/)."""
    if not is_name(model["name"]):
        raise ConfigError(
            f"Invalid config: {key}.{origin} = {model[origin]!r} gives the model folder name {model['name']!r}, "
            f"but {NAME_RULE}; set {key}.name."
        )


def _model_dirs(model: dict, resources_dir: str) -> list[Path]:
    """Folders whose config.json describes the model: its local folder, then its conversion."""
    candidates = [Path(resources_dir) / "models" / model["name"]]
    if model["source"] == "local":
        candidates.insert(0, Path(model["path"]))
    return candidates


def known_n_layers(model: dict, resources_dir: str = "resources") -> int | None:
    """The model's layer count when it can be known without loading weights, else None."""
    if model.get("architecture"):
        return config_file_value(model["architecture"], "num_hidden_layers")
    if model["source"] == "pypi-gguf":
        return PYPI_GGUF_MODELS[model["pypi_key"]].n_layers
    for directory in _model_dirs(model, resources_dir):
        count = layer_count(directory)
        if count is not None:
            return count
    return None


def known_d_model(model: dict, resources_dir: str = "resources") -> int | None:
    """The model's residual-stream width D when it can be known without loading weights,
    else None (a hub model not converted yet)."""
    if model.get("architecture"):
        return config_file_value(model["architecture"], "hidden_size")
    if model["source"] == "pypi-gguf":
        return PYPI_GGUF_MODELS[model["pypi_key"]].d_model
    for directory in _model_dirs(model, resources_dir):
        width = model_width(directory)
        if width is not None:
            return width
    return None


def model_shape(model: dict, resources_dir: str = "resources") -> ModelShape:
    """The :class:`ModelShape` of a checked ``model`` section."""
    return ModelShape(known_n_layers(model, resources_dir), known_d_model(model, resources_dir), known_context(model, resources_dir))


def known_context(model: dict, resources_dir: str = "resources") -> int | None:
    """The model's context (longest sequence in tokens) when it can be known without
    loading weights, else None."""
    if model["source"] == "pypi-gguf":
        return PYPI_GGUF_MODELS[model["pypi_key"]].context
    return next((n for d in _model_dirs(model, resources_dir) if (n := context_length(d)) is not None), None)
