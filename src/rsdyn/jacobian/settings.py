"""The ``jacobian`` section: its allowed values and the config-time checks against the
corpus size. Imports no torch."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from rsdyn.core.schema import ConfigError

SECTIONS = ("jacobian",)

#: the weights every run differentiates, and the baselines a config may add: freshly
#: initialised weights (one model per init seed) and two surrogates of the trained updates
WEIGHTS_TRAINED = "trained"
BASELINES = ("initial", "svd_matched", "norm_matched")
DTYPE_NAMES = ("float32", "float64")
MODES = ("rev", "fwd")
ATTENTIONS = ("last_token", "eager")
MLP_JACOBIANS = ("gated", "autodiff")
SPECTRA_DEVICES = ("auto", "cpu", "cuda")


#: the cumulative product's spectra (one SVD each) after every PRODUCT_EVERY-th layer
PRODUCT_EVERY = 2


def product_depths(n_transitions: int, every: int = PRODUCT_EVERY) -> list[int]:
    """The transitions after which the cumulative product's spectra are computed: the end
    (the MLP update, s = 2l + 1) of the last layer and of every ``every``-th layer before it."""
    n_layers = n_transitions // 2
    return [2 * layer + 1 for layer in range((n_layers - 1) % every, n_layers, every)]


class JacobianError(ValueError):
    """The jacobian settings or inputs cannot be used; the message says what is allowed."""


def check_settings(settings: Mapping[str, Any]) -> None:
    """Checks of the ``jacobian`` section that need no model or corpus."""
    unknown = [name for name in settings.get("baselines", []) if name not in BASELINES]
    if unknown:
        raise JacobianError(f"jacobian.baselines = {list(settings['baselines'])}; allowed entries are {', '.join(BASELINES)}.")
    for key, allowed, default in (
        ("dtype", DTYPE_NAMES, "float32"), ("spectra_dtype", DTYPE_NAMES, "float32"), ("mode", MODES, "rev"),
        ("attention", ATTENTIONS, "last_token"), ("spectra_device", SPECTRA_DEVICES, "auto"), ("mlp", MLP_JACOBIANS, "gated"),
    ):
        if settings.get(key, default) not in allowed:
            raise JacobianError(f"jacobian.{key} = {settings[key]!r}; allowed values are {', '.join(allowed)}.")
    seeds = settings.get("init_seeds", [0])
    if "initial" in settings.get("baselines", []) and not seeds:
        raise JacobianError("jacobian.init_seeds = []; the initial baseline needs at least one seed (or drop it from jacobian.baselines).")


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
