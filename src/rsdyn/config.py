"""The config of a workflow: every run's complete settings, checked before any job runs.

The top-level sections of the config are defaults for every run; a run may override any
of them under its own key (deep merge). :func:`resolve_runs` validates the whole config
against the JSON schema (:mod:`rsdyn.core.schema`), then, for each run, merges and
validates every section, checks and fills in the ``model`` section, and hands each
section to the stage that owns it: every stage's ``settings`` module names its
``SECTIONS`` and may define ``check_config(section, run, shape)`` (checks that need
another section, the corpus size or the model's shape) and ``resolve_config(run,
validate)`` (settings derived from others). Those modules import no torch and no stage
computation, so a config is checked in a fraction of a second at the terminal.
"""

from __future__ import annotations

import copy
from collections.abc import Mapping
from typing import Any

from rsdyn.cae import settings as cae
from rsdyn.capture import settings as capture
from rsdyn.core.paths import check_folders
from rsdyn.core.schema import (
    ConfigError,
    canonical,
    deep_merge,
    load_schema,
    validate_config,
    validate_section,
)
from rsdyn.geometry import settings as geometry
from rsdyn.jacobian import settings as jacobian
from rsdyn.models.settings import check_model, model_shape
from rsdyn.population import settings as population
from rsdyn.report import settings as report
from rsdyn.units import settings as units

#: the stages in workflow order, each with the settings sections it owns
STAGES = (capture, units, geometry, cae, population, jacobian, report)

#: every settings section a run has besides ``name`` and ``model``, in workflow order
SECTIONS = tuple(section for stage in STAGES for section in stage.SECTIONS)


def resolve_runs(config: dict, schema: dict | None = None, project: str | None = None) -> dict[str, dict]:
    """Validate ``config`` and return ``{run name: complete settings}``.

    Each run's settings hold ``name``, ``model`` and every section of ``SECTIONS``
    (top-level defaults, overridden by the run's own keys, defaults filled in).
    ``project``: the project folder that relative output folders must lie in (default:
    the working directory, as for snakemake).
    """
    schema = schema or load_schema()
    validate_config(config, schema)
    check_folders(config, project)
    resources_dir = config.get("resources_dir", "resources")
    runs: dict[str, dict] = {}
    for index, run in enumerate(config["runs"]):
        where = f"runs[{index}] ({run['name']})"

        def validate(definition: str, values: dict, key: str) -> None:
            try:
                validate_section(values, schema["definitions"][definition], schema, key)
            except ConfigError as err:
                raise ConfigError(str(err).replace("Invalid config: ", f"Invalid config: {where}: ", 1)) from None

        settings: dict[str, Any] = {"name": run["name"], "model": copy.deepcopy(run["model"])}
        if run.get("control"):
            settings["control"] = dict(run["control"])
        for section in SECTIONS:
            settings[section] = deep_merge(config.get(section, {}), run.get(section, {}))
            validate(section, settings[section], section)
        for stage in STAGES:
            if hasattr(stage, "resolve_config"):
                stage.resolve_config(settings, validate)
        check_model(settings["model"], f"runs[{index}].model", resources_dir)
        shape = model_shape(settings["model"], resources_dir)
        for stage in STAGES:
            for section in stage.SECTIONS if hasattr(stage, "check_config") else ():
                try:
                    stage.check_config(section, settings, shape)
                except ConfigError as err:
                    raise ConfigError(f"Invalid config: {where}: {err}") from None
        runs[run["name"]] = canonical(settings)
    check_controls(runs)
    return runs


def check_controls(runs: Mapping[str, Mapping[str, Any]]) -> None:
    """A control names another run of the config, which is not a control itself."""
    for index, (name, settings) in enumerate(runs.items()):
        control = settings.get("control")
        if not control:
            continue
        target = control["of"]
        if target == name or target not in runs:
            others = ", ".join(repr(other) for other in runs if other != name) or "none"
            raise ConfigError(
                f"Invalid config: runs[{index}] ({name}) control.of = {target!r}; it must name another run of the config ({others})."
            )
        if runs[target].get("control"):
            raise ConfigError(
                f"Invalid config: runs[{index}] ({name}) control.of = {target!r}, which is a control itself; "
                "a control reads against an uncontrolled run."
            )
