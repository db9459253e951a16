"""The ``jacobian`` section: its allowed values and the config-time checks against the
corpus size. Imports no torch."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from rsdyn.core.schema import ConfigError

SECTIONS = ("jacobian",)

#: the weights every run differentiates, and the baselines a config may add
WEIGHTS_TRAINED = "trained"
BASELINES = ("initial",)
DTYPE_NAMES = ("float32", "float64")
MODES = ("rev", "fwd")


class JacobianError(ValueError):
    """The jacobian settings or inputs cannot be used; the message says what is allowed."""


def check_settings(settings: Mapping[str, Any]) -> None:
    """Checks of the ``jacobian`` section that need no model: baselines, dtype, mode."""
    unknown = [name for name in settings.get("baselines", []) if name not in BASELINES]
    if unknown:
        raise JacobianError(f"jacobian.baselines = {list(settings['baselines'])}; allowed entries are {', '.join(BASELINES)}.")
    if settings.get("dtype", "float32") not in DTYPE_NAMES:
        raise JacobianError(f"jacobian.dtype = {settings['dtype']!r}; allowed values are {', '.join(DTYPE_NAMES)}.")
    if settings.get("mode", "rev") not in MODES:
        raise JacobianError(f"jacobian.mode = {settings['mode']!r}; allowed values are {', '.join(MODES)}.")


def check_jacobian(settings: Mapping[str, Any], corpus_n_samples: int | None) -> None:
    """Config-time checks of a run's ``jacobian`` section (``corpus_n_samples``: the
    corpus size when the config fixes it, else None)."""
    check_settings(settings)
    if corpus_n_samples is not None and settings["n_samples"] > corpus_n_samples:
        raise JacobianError(
            f"jacobian.n_samples = {settings['n_samples']} exceeds corpus.n_samples = {corpus_n_samples}; "
            f"use at most {corpus_n_samples}."
        )


def check_config(section: str, run: Mapping[str, Any], shape) -> None:  # noqa: ARG001 - same signature for every stage
    """Config-time checks of the ``jacobian`` section (:func:`check_jacobian`)."""
    try:
        check_jacobian(run[section], run["corpus"]["n_samples"])
    except JacobianError as err:
        raise ConfigError(str(err)) from None
