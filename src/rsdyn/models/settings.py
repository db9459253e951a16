"""The ``model`` section of a run: its checks and defaults, and the model's shape (layer
count, width) where the config can know it without loading weights (the PyPI table or a
converted ``config.json``). Imports no torch: the config imports it before any job."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from rsdyn.core.paths import NAME_RULE, is_name
from rsdyn.core.schema import ConfigError
from rsdyn.models.adapters import UnsupportedModelError, adapter_for
from rsdyn.models.registry import (
    PYPI_GGUF_MODELS,
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
    ``family``, ``revision``) in place; ConfigError naming ``key`` (``runs[i].model``)."""
    source = model["source"]
    if source == "pypi-gguf":
        pypi_key = model.get("pypi_key") or model.get("name")
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
        if not (Path(resources_dir) / "models" / model["name"]).is_dir():  # still to be converted
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
