"""The config's JSON schema: loading it, validating against it with its defaults filled
in, and the one-sentence errors that name the key and what is allowed.

The stages' own checks (a key against another, against the corpus or the model) live in
each stage's ``settings`` module; :mod:`rsdyn.config` collects them.
"""

from __future__ import annotations

import copy
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import jsonschema
import yaml

DEFAULT_SCHEMA = Path(__file__).resolve().parents[3] / "workflow" / "schemas" / "config.schema.yaml"


#: the words that say what a name (of a run, of a model folder) may be
NAME_RULE = "a name may contain only letters, digits, '.', '_' and '-', and may not be '.' or '..'"


class ConfigError(ValueError):
    """The configuration is invalid; the message names the key and what is allowed."""


def load_schema(path: str | Path | None = None) -> dict:
    path = Path(path) if path else DEFAULT_SCHEMA
    with open(path) as handle:
        return yaml.safe_load(handle)


def _is_integer(checker, instance) -> bool:  # noqa: ARG001 - type checker signature
    """JSON Schema counts 2.0 as an integer; the workflow does not (``range(2.0)`` fails)."""
    return isinstance(instance, int) and not isinstance(instance, bool)


def _filling_validator(schema: dict):
    """A Draft 2020-12 validator that also fills in ``default`` values and takes only
    Python ints (not whole floats such as 2.0) as integers."""
    base = jsonschema.Draft202012Validator
    validate_properties = base.VALIDATORS["properties"]

    def properties(validator, props, instance, schema_):
        if isinstance(instance, dict):
            for key, sub in props.items():
                if "default" in sub and key not in instance:
                    instance[key] = copy.deepcopy(sub["default"])
        yield from validate_properties(validator, props, instance, schema_)

    type_checker = base.TYPE_CHECKER.redefine("integer", _is_integer)
    cls = jsonschema.validators.extend(base, {"properties": properties}, type_checker=type_checker)
    return cls(schema)


#: the words of a bound in an error message
_BOUNDS = {"minimum": "at least", "exclusiveMinimum": "above", "maximum": "at most", "exclusiveMaximum": "below"}


def _describe(error: jsonschema.ValidationError, prefix: str = "") -> str:
    """One sentence for ``error``; ``prefix``: the dotted key of the validated instance
    within the config (``teleport``, ``cae.corpus``), empty for the whole config."""
    key = (prefix + "".join(f"[{p}]" if isinstance(p, int) else f".{p}" for p in error.absolute_path)).lstrip(".") or "(top level)"
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
    if error.validator in _BOUNDS:
        return f"Invalid config: {key} = {value!r}; it must be {_BOUNDS[error.validator]} {error.validator_value}."
    if error.validator == "type":
        expected = error.validator_value if isinstance(error.validator_value, list) else [error.validator_value]
        if "integer" in expected and isinstance(value, float) and value.is_integer():
            return f"Invalid config: {key} = {value!r}; it must be an integer, written without a decimal point ({int(value)})."
        return f"Invalid config: {key} = {value!r}; expected type {' or '.join(expected)}."
    if error.validator == "minLength":
        return f"Invalid config: {key} = {value!r}; it must not be empty."
    if error.validator == "pattern":  # only names have a pattern
        return f"Invalid config: {key} = {value!r}; {NAME_RULE}."
    return f"Invalid config: {key}: {error.message}."


def validate_section(instance: Any, schema: dict, root: dict, key: str = "") -> None:
    """Validate ``instance`` against ``schema`` (a section's definition, resolved within
    ``root``), filling its defaults in place; ConfigError naming the first bad key
    (``key``: the instance's dotted key in the config, such as ``teleport``)."""
    full = dict(schema)
    if "definitions" not in full:
        full["definitions"] = root.get("definitions", {})
    validator = _filling_validator(full)
    errors = sorted(validator.iter_errors(instance), key=lambda e: list(e.absolute_path))
    if errors:
        raise ConfigError(_describe(errors[0], key))


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
    validate_section(config, schema, schema)
    names = [run["name"] for run in config["runs"]]
    duplicates = sorted({n for n in names if names.count(n) > 1})
    if duplicates:
        raise ConfigError(f"Invalid config: runs have duplicate names {duplicates}; each run needs its own name.")
    return config


def canonical(value: Any) -> Any:
    """``value`` with every mapping's keys sorted (recursively), so that the same settings
    always look the same to Snakemake's params trigger whatever the config file's order."""
    if isinstance(value, Mapping):
        return {key: canonical(value[key]) for key in sorted(value)}
    if isinstance(value, list):
        return [canonical(item) for item in value]
    return value


def typed_overrides(overrides: Mapping) -> dict:
    """``--config`` values with their YAML types back: Snakemake parses a nested value such
    as ``teleport="{grid_n: 12}"`` with YAML's BaseLoader, which leaves every leaf a
    string ('12'); each string leaf that YAML reads as a number, a boolean or null
    becomes one (a string that only looks like a number must be quoted twice)."""

    def typed(value: Any) -> Any:
        if isinstance(value, Mapping):
            return {key: typed(item) for key, item in value.items()}
        if isinstance(value, list):
            return [typed(item) for item in value]
        if isinstance(value, str) and value.strip():
            try:
                parsed = yaml.safe_load(value)
            except yaml.YAMLError:
                return value
            return parsed if parsed is None or isinstance(parsed, (bool, int, float)) else value
        return value

    return {key: typed(value) for key, value in overrides.items()}


def section_defaults(section: str, schema: dict | None = None) -> dict:
    """Every default of one settings section, as the schema fills them into an empty section."""
    schema = schema or load_schema()
    values: dict = {}
    validate_section(values, schema["definitions"][section], schema)
    return values
