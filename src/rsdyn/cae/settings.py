"""The ``cae`` section: its allowed values, the sequence split, the CAE's own corpus
(``cae.corpus``) and the store it trains on, and the config-time checks. Imports no
torch: the workflow's rule files read it while Snakemake parses them."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import numpy as np

from rsdyn.core.schema import ConfigError, deep_merge

SECTIONS = ("cae",)

INPUT_SCALINGS = ("global", "unit", "none")

DEFAULT_INPUT_SCALING = "unit"


def check_input_scaling(mode: str) -> None:
    """Raise a clear ValueError unless ``mode`` is one of ``INPUT_SCALINGS``."""
    if mode not in INPUT_SCALINGS:
        raise ValueError(f"cae.input_scaling = {mode!r}; allowed: {', '.join(INPUT_SCALINGS)}.")


def check_training_options(grad_clip: float | None, warmup_epochs: float) -> None:
    """Raise a clear ValueError for a non-positive ``grad_clip`` or a negative ``warmup_epochs``."""
    if grad_clip is not None and not grad_clip > 0:
        raise ValueError(f"cae.grad_clip = {grad_clip}; it must be a positive number or null (no clipping).")
    if warmup_epochs < 0:
        raise ValueError(f"cae.warmup_epochs = {warmup_epochs}; it must be 0 (no warm-up) or positive.")


def training_seeds(settings: Mapping[str, Any]) -> list[int]:
    """The training seeds of the ``cae`` settings: ``cae.seeds``, or ``[cae.seed]`` when the
    settings have none (a single CAE). Raises a clear ValueError unless they are distinct
    non-negative integers, at least one."""
    seeds = settings.get("seeds")
    if seeds is None:
        return [int(settings["seed"])]
    if (not isinstance(seeds, (list, tuple)) or not seeds
            or any(isinstance(s, bool) or not isinstance(s, (int, np.integer)) or s < 0 for s in seeds) or len(set(seeds)) != len(seeds)):
        raise ValueError(f"cae.seeds = {seeds!r}; it must be a list of distinct non-negative integers, at least one.")
    return [int(s) for s in seeds]


def split_by_sequence(
    n_sequences: int, val_fraction: float = 0.15, test_fraction: float = 0.15, seed: int = 0
) -> dict[str, np.ndarray]:
    """Seeded split of sequence indices into sorted ``train``, ``val`` and ``test`` arrays.

    Validation and test get round(fraction * n) sequences each, at least one; every
    sequence is in exactly one set.
    """
    if not (0 < val_fraction < 1 and 0 < test_fraction < 1 and val_fraction + test_fraction < 1):
        raise ValueError(
            f"cae.val_fraction = {val_fraction} and cae.test_fraction = {test_fraction}; "
            "each must lie in (0, 1) and their sum below 1."
        )
    n_val = max(1, round(val_fraction * n_sequences))
    n_test = max(1, round(test_fraction * n_sequences))
    if n_sequences - n_val - n_test < 1:
        raise ValueError(
            f"The CAE split needs at least one training sequence; {n_sequences} sequences "
            f"leave none after {n_val} for validation and {n_test} for test."
        )
    order = np.random.default_rng(seed).permutation(n_sequences)
    return {
        "test": np.sort(order[:n_test]),
        "val": np.sort(order[n_test : n_test + n_val]),
        "train": np.sort(order[n_test + n_val :]),
    }


DATA_MODES = ("auto", "memory", "stream")

DEFAULT_BLOCK_MB = 512


def cae_corpus_settings(run_corpus: Mapping[str, Any], override: Mapping[str, Any] | None) -> dict[str, Any] | None:
    """The complete corpus settings of the CAE's own corpus, or None (``cae.corpus: null``:
    train on the run's corpus and ``activations.zarr``).

    ``override`` (``cae.corpus``) is merged over the run's ``corpus`` settings. Local
    files belong to the dataset they hold: when the override names another
    ``hf_dataset`` or ``hf_config`` without ``local_candidates`` of its own, the run's
    local candidates are dropped (a WikiText-2 file is never read for WikiText-103).
    """
    if override is None:
        return None
    merged = deep_merge(run_corpus, override)
    other_dataset = any(key in override and override[key] != run_corpus.get(key) for key in ("hf_dataset", "hf_config"))
    if other_dataset and "local_candidates" not in override:
        candidates = run_corpus.get("local_candidates", [])
        merged["local_candidates"] = {split: [] for split in candidates} if isinstance(candidates, Mapping) else []
    return merged


def cae_store_name(run_settings: Mapping[str, Any]) -> str:
    """The store the CAE trains on: ``cae_activations.zarr`` (its own corpus) when
    ``cae.corpus`` is set, else the run's ``activations.zarr``."""
    return "cae_activations.zarr" if run_settings["cae"].get("corpus") is not None else "activations.zarr"


def cae_job_settings(run_settings: Mapping[str, Any]) -> dict[str, Any]:
    """The cae settings the training uses; its corpus reaches it through the store."""
    return {key: value for key, value in run_settings["cae"].items() if key not in ("corpus", "capture_shards")}


def local_corpus_candidate(corpus_settings: Mapping[str, Any]) -> str | None:
    """The first existing local file of the corpus settings' split (``local_candidates``
    as a list, or per split), or None (the corpus is then loaded from the hub)."""
    candidates = corpus_settings.get("local_candidates", [])
    if isinstance(candidates, Mapping):
        candidates = candidates.get(corpus_settings.get("split"), [])
    return next((str(c) for c in candidates if Path(c).is_file()), None)


def resolve_config(run: dict, validate: Callable[[str, dict, str], None]) -> None:
    """Replace ``cae.corpus`` by the CAE's complete corpus settings (None: the run's own
    corpus and store), validated like ``corpus`` (``validate(definition, values, key)``)."""
    cae = run["cae"]
    cae["corpus"] = cae_corpus_settings(run["corpus"], cae.get("corpus"))
    if cae["corpus"] is not None:
        validate("corpus", cae["corpus"], "cae.corpus")


def check_config(section: str, run: Mapping[str, Any], shape) -> None:  # noqa: ARG001 - same signature for every stage
    """Config-time checks of the ``cae`` section: the split leaves training data (the schema
    checks ``cae.seeds``: distinct non-negative integers, at least one)."""
    cae = run[section]
    if cae["val_fraction"] + cae["test_fraction"] >= 1:
        raise ConfigError(
            f"cae.val_fraction + cae.test_fraction = {cae['val_fraction']} + {cae['test_fraction']} leaves no "
            "training data; their sum must be below 1."
        )
    key = "cae.corpus.n_samples" if cae.get("corpus") else "corpus.n_samples"
    n_samples = cae["corpus"]["n_samples"] if cae.get("corpus") else run["corpus"]["n_samples"]
    if n_samples is not None:
        try:
            split_by_sequence(n_samples, cae["val_fraction"], cae["test_fraction"], cae["seed"])
        except ValueError as err:
            raise ConfigError(f"{str(err).rstrip('.')} ({key} = {n_samples}, cae.val_fraction, cae.test_fraction).") from None
