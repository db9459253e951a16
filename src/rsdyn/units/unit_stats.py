"""Per-unit statistics stage (Fig. 1C, 1D, 1G/H and Fig. 2 of the paper): shards and gather.

``compute_shard`` runs every per-unit quantity on one unit range of
``activations.zarr`` for both conditions, one block of units at a time:
correlations (``rsdyn.units.correlations``), the three MI estimators (``rsdyn.units.mi``) and the
rotation numbers with their nulls (``rsdyn.units.rotations``). ``gather`` joins the shards
into ``unit_stats.zarr``. Activations are ``(n_samples, n_sublayers, n_units)``.
"""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from rsdyn.core.errors import UnitStatsInputError
from rsdyn.core.jobs import progress
from rsdyn.core.store import open_group
from rsdyn.core.threads import torch_threads
from rsdyn.units.correlations import corr_consecutive, corr_pairs_hist
from rsdyn.units.mi import mi_gaussian, mi_kde_estimates, mi_ksg
from rsdyn.units.rotations import fdr_arrays, rotations
from rsdyn.units.settings import CONDITIONS, MIN_SAMPLES

#: arrays whose unit axis is not the last one (gather concatenates along it)
UNIT_AXIS = {"corr_pairs_hist": 0}

#: units processed together inside a shard (bounds memory; never changes the numbers)
UNIT_BLOCK = 16

#: units processed together on a GPU (one batch of every unit of a paper-scale shard,
#: 64 units: the KDE then holds two 256 x N x N float64 buffers, 2 GB each at N = 1000);
#: on CUDA the numbers are block-invariant up to round-off only
DEVICE_UNIT_BLOCK = 64

DEFAULT_SETTINGS: dict[str, Any] = {
    "device": "cpu",
    "kde_precision": "auto",
    "corr_bins": 20,
    "mi_eps": 1e-10,
    "ksg_k": 3,
    "n_shuffles": 1000,
    "surrogate": "phase",
    "per_sample": False,
    "per_sample_shuffles": 100,
    "fdr_q": 0.05,
    "seed": 0,
}


# --------------------------------------------------------------------------- inputs


def check_activations(acts: np.ndarray, unit_start: int, condition: str) -> None:
    """Raise if ``acts`` (N, 2L, U) has too few samples or sublayers, or NaN/inf.

    The message names the condition and the global unit range of ``acts``.
    """
    n_samples, n_sublayers, n_units = acts.shape
    unit_range = f"units {unit_start}-{unit_start + n_units - 1}"
    if n_samples < MIN_SAMPLES:
        raise UnitStatsInputError(
            f"activations '{condition}' ({unit_range}) has {n_samples} samples; "
            f"unit_stats needs at least {MIN_SAMPLES}."
        )
    if n_sublayers < 2:
        raise UnitStatsInputError(
            f"activations '{condition}' ({unit_range}) has {n_sublayers} sublayer(s); "
            "unit_stats needs at least 2."
        )
    finite = np.isfinite(acts)
    if not finite.all():
        sample, sublayer, unit = np.argwhere(~finite)[0]
        bad_units = np.flatnonzero(~finite.all(axis=(0, 1))) + unit_start
        raise UnitStatsInputError(
            f"activations '{condition}' has NaN or inf values in {unit_range} "
            f"({len(bad_units)} unit(s), first: unit {unit + unit_start}, sublayer {sublayer}, "
            f"sample {sample}); every activation must be finite."
        )


def resolve_device(device: str) -> torch.device:
    """The torch device of ``unit_stats.device`` (``auto`` -> CUDA when visible)."""
    from rsdyn.models.weights import resolve_device as resolve_model_device

    try:
        return torch.device(resolve_model_device(device, "unit_stats.device"))
    except ValueError as err:
        raise UnitStatsInputError(str(err)) from None


# --------------------------------------------------------------------------- shard / gather


def unit_block_stats(acts: np.ndarray, settings: Mapping[str, Any], timings: dict[str, float] | None = None,
                     batched: bool | None = None) -> dict[str, np.ndarray]:
    """Every per-unit quantity for one block of units of one condition, (N, S, U) float64.

    ``batched`` (default: when ``unit_stats.device`` is not the CPU): the correlations and
    the rotation numbers with all their nulls run as batched torch operations on the
    device (:mod:`rsdyn.units.batched`); otherwise in the NumPy/numba kernels. The KDE and
    KSG kernels run on the device either way."""
    settings = {**DEFAULT_SETTINGS, **settings}
    device = resolve_device(settings["device"])
    batched = device.type != "cpu" if batched is None else batched
    timings = {} if timings is None else timings

    def timed(name, function, *args, **kwargs):
        start = time.perf_counter()
        value = function(*args, **kwargs)
        timings[name] = timings.get(name, 0.0) + time.perf_counter() - start
        return value

    if batched:
        from rsdyn.units.batched import correlations, rotation_kernels

        r, pairs = timed("correlations", correlations, acts, settings["corr_bins"], device)
        kernels = rotation_kernels(device)
    else:
        r = timed("corr_consecutive", corr_consecutive, acts)
        pairs = timed("corr_pairs_hist", corr_pairs_hist, acts, settings["corr_bins"])
        kernels = None
    out = {
        "mean_activation": acts.mean(axis=0),
        "std_activation": acts.std(axis=0, ddof=1),
        "corr_consecutive": r,
        "corr_pairs_hist": pairs,
        **timed("mi_kde", mi_kde_estimates, acts, settings["mi_eps"], device, settings["kde_precision"]),
        "mi_ksg": timed("mi_ksg", mi_ksg, acts, settings["ksg_k"], device),
        "mi_gaussian": mi_gaussian(r),
    }
    out.update(
        timed(
            "rotations",
            rotations,
            acts,
            settings["n_shuffles"],
            settings["surrogate"],
            settings["seed"],
            settings["per_sample"],
            settings["per_sample_shuffles"],
            kernels,
        )
    )
    return out


def _concat_units(blocks: Sequence[Mapping[str, np.ndarray]]) -> dict[str, np.ndarray]:
    return {
        name: np.concatenate([block[name] for block in blocks], axis=UNIT_AXIS.get(name, -1))
        for name in blocks[0]
    }


def read_units(store_path: str | Path, condition: str, unit_start: int, unit_stop: int) -> np.ndarray:
    """Activations of one condition and unit range as float64 (N, 2L, U)."""
    group = open_group(store_path)
    if condition not in group:
        raise UnitStatsInputError(f"{store_path} has no array '{condition}'; expected {', '.join(CONDITIONS)}.")
    array = group[condition]
    n_units = array.shape[2]
    if not 0 <= unit_start < unit_stop <= n_units:
        raise UnitStatsInputError(
            f"unit range {unit_start}-{unit_stop - 1} is outside the {n_units} units of {store_path}."
        )
    return np.asarray(array[:, :, unit_start:unit_stop], dtype=np.float64)


def compute_shard(
    store_path: str | Path,
    unit_start: int,
    unit_stop: int,
    settings: Mapping[str, Any],
    timings: dict[str, float] | None = None,
) -> dict[str, Any]:
    """All per-unit quantities of units ``unit_start..unit_stop-1`` for both conditions.

    Reads only that unit range of ``activations.zarr``, checks it (raises before any
    compute), and returns ``{"units": (U,), "original": {...}, "shuffled": {...}}``.
    Torch runs on one thread so the numbers do not depend on the shard layout.
    """
    settings = check_settings(settings)
    data = {condition: read_units(store_path, condition, unit_start, unit_stop) for condition in CONDITIONS}
    for condition, acts in data.items():
        check_activations(acts, unit_start, condition)
    if data["original"].shape[:2] != data["shuffled"].shape[:2]:
        raise UnitStatsInputError(
            f"conditions differ in shape: original {data['original'].shape}, shuffled {data['shuffled'].shape}."
        )
    n_samples = data["original"].shape[0]
    if n_samples <= settings["ksg_k"]:
        raise UnitStatsInputError(
            f"activations have {n_samples} samples; KSG with unit_stats.ksg_k = {settings['ksg_k']} "
            f"needs more than {settings['ksg_k']}."
        )
    result: dict[str, Any] = {"units": np.arange(unit_start, unit_stop, dtype=np.int64)}
    n_units = unit_stop - unit_start
    block = UNIT_BLOCK if resolve_device(settings["device"]).type == "cpu" else DEVICE_UNIT_BLOCK
    with torch_threads(1):
        for condition, acts in data.items():
            blocks = []
            starts = range(0, n_units, block)
            for first in progress(starts, desc=f"unit_stats {condition} units {unit_start}-{unit_stop - 1}", unit="block"):
                blocks.append(unit_block_stats(acts[:, :, first : first + block], settings, timings))
            result[condition] = _concat_units(blocks)
    return result


def shard_attrs(store_path: str | Path, unit_start: int, unit_stop: int, settings: Mapping[str, Any]) -> dict[str, Any]:
    """Attributes of a shard store: its unit range, the source's metadata and the settings."""
    source = dict(open_group(store_path).attrs)
    kept = {key: source[key] for key in ("model_name", "model_id", "model_revision", "n_layers", "d_model", "n_samples", "sublayer_names") if key in source}
    return {
        **kept,
        "unit_start": int(unit_start),
        "unit_stop": int(unit_stop),
        "settings": {key: value for key, value in {**DEFAULT_SETTINGS, **settings}.items() if key not in ("shards", "device")},
    }


def gather(shard_paths: Sequence[str | Path]) -> tuple[dict[str, Any], dict[str, Any]]:
    """Join shard stores into the arrays and attributes of ``unit_stats.zarr``.

    Checks that the shards cover every unit exactly once; arrays are concatenated
    along their unit axis in unit order. The Benjamini-Hochberg discoveries of each
    rotation null (``rotations_<null>_fdr``) are decided here, over all units.
    """
    from rsdyn.core.store import read_group

    if not shard_paths:
        raise UnitStatsInputError("gather needs at least one shard store.")
    shards = []
    for path in shard_paths:
        group = open_group(path)
        shards.append((int(group.attrs["unit_start"]), int(group.attrs["unit_stop"]), dict(group.attrs), read_group(path)))
    shards.sort(key=lambda item: item[0])
    expected = 0
    for start, stop, _, _ in shards:
        if start != expected:
            raise UnitStatsInputError(
                f"shards do not tile the units: a shard starts at unit {start} where unit {expected} was expected."
            )
        expected = stop
    d_model = shards[0][2].get("d_model", expected)
    if expected != d_model:
        raise UnitStatsInputError(f"shards cover units 0-{expected - 1} but the model has {d_model} units.")
    arrays: dict[str, Any] = {"units": np.concatenate([shard[3]["units"] for shard in shards])}
    fdr_q = float(shards[0][2].get("settings", {}).get("fdr_q", DEFAULT_SETTINGS["fdr_q"]))
    for condition in CONDITIONS:
        arrays[condition] = _concat_units([shard[3][condition] for shard in shards])
        arrays[condition].update(fdr_arrays(arrays[condition], fdr_q))
    attrs = {key: value for key, value in shards[0][2].items() if key not in ("unit_start", "unit_stop")}
    return arrays, attrs


# --------------------------------------------------------------------------- synthetic data


def synthetic_activations(n_samples: int, n_layers: int, d_model: int, seed: int = 0) -> np.ndarray:
    """Random residual-stream-like activations (N, 2L, D) float32, for tests and benchmarks.

    Each unit drifts and oscillates over depth (so its mean trajectory rotates) and each
    sample follows a random walk around it whose steps shrink with depth (so
    consecutive sublayers correlate more and more).
    """
    rng = np.random.default_rng(seed)
    depth = np.arange(2 * n_layers) / max(1, 2 * n_layers - 1)
    frequency = rng.uniform(0.5, 4.0, d_model) * 2 * np.pi
    phase = rng.uniform(0, 2 * np.pi, d_model)
    mean = rng.normal(0, 1, d_model) * depth[:, None] * 3 + 0.5 * np.sin(frequency * depth[:, None] + phase)
    steps = rng.standard_normal((n_samples, 2 * n_layers, d_model)) * np.linspace(1.0, 0.2, 2 * n_layers)[None, :, None]
    return (mean[None] + np.cumsum(steps, axis=1)).astype(np.float32)


def write_synthetic_store(
    path: str | Path, n_samples: int, n_layers: int, d_model: int, seed: int = 0, unit_chunk: int = 16
) -> Path:
    """An ``activations.zarr`` following the data contract, filled with synthetic data."""
    from rsdyn.core.store import write_group
    from rsdyn.models.adapters import sublayer_names

    ids = np.full((n_samples, 4), -1, dtype=np.int32)
    chunk = (n_samples, 2 * n_layers, unit_chunk)
    return write_group(
        path,
        {
            "original": synthetic_activations(n_samples, n_layers, d_model, seed),
            "shuffled": synthetic_activations(n_samples, n_layers, d_model, seed + 1),
            "original_ids": ids,
            "shuffled_ids": ids,
        },
        attrs={
            "model_name": "synthetic", "model_id": "synthetic", "model_revision": "none",
            "family": "llama", "dtype": "float32", "n_layers": n_layers, "d_model": d_model,
            "n_samples": n_samples, "sublayer_names": sublayer_names(n_layers),
            "texts": [f"text {index}" for index in range(n_samples)], "config": {},
        },
        chunks={"original": chunk, "shuffled": chunk},
    )


def check_settings(settings: Mapping[str, Any]) -> dict[str, Any]:
    """The settings with defaults filled in; raises on a value the kernels cannot use."""
    settings = {**DEFAULT_SETTINGS, **settings}
    allowed = {"surrogate": ("phase", "circular"), "kde_precision": ("auto", "float32", "float64"), "device": ("auto", "cpu", "cuda")}
    for key, values in allowed.items():
        if settings[key] not in values:
            raise UnitStatsInputError(
                f"unit_stats.{key} = {settings[key]!r}; allowed values are {', '.join(map(repr, values))}."
            )
    for key, minimum in (("corr_bins", 2), ("ksg_k", 1), ("n_shuffles", 1), ("per_sample_shuffles", 1)):
        if int(settings[key]) < minimum:
            raise UnitStatsInputError(f"unit_stats.{key} = {settings[key]!r}; it must be at least {minimum}.")
    if not 0 < settings["fdr_q"] < 1:
        raise UnitStatsInputError(f"unit_stats.fdr_q = {settings['fdr_q']!r}; it must lie strictly between 0 and 1.")
    if not settings["mi_eps"] > 0:
        raise UnitStatsInputError(f"unit_stats.mi_eps = {settings['mi_eps']!r}; it must be positive.")
    resolve_device(settings["device"])
    return settings
