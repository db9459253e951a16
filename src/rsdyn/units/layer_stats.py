"""Population statistics per sublayer and per transition (Fig. 1B, E, F).

Per sublayer: mean |activation| over samples and units, mean, s.e.m. and s.d. over
samples of the L2 norm of the residual-stream vector, the density (fraction of units whose
mean activation over samples exceeds a threshold in absolute value), and the number of
distinct states (distinct rows of the sublayer's (N, D) matrix: sublayer 0 is the
embedding of the last token, so it has as many states as there are distinct last tokens).
Per transition l -> l + 1: cosine similarity and velocity ||h_{l+1} - h_l||_2 of each
sample's residual-stream vectors (mean, s.e.m. and s.d. over samples), with the transition
type: ``within`` (pre-attn -> pre-MLP of the same layer, the attention update) or
``cross`` (pre-MLP -> next layer's pre-attn, the MLP update).

Every quantity is a sum over units, so the store is streamed one unit chunk at a time.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

import numpy as np
import pandas as pd
from tqdm.auto import tqdm

from rsdyn.core.errors import UnitStatsInputError
from rsdyn.core.store import open_group
from rsdyn.models.adapters import sublayer_names as default_sublayer_names
from rsdyn.units.settings import CONDITIONS, MIN_SAMPLES

COLUMNS = [
    "condition", "kind", "index", "name", "layer", "site", "transition_type",
    "mean_abs_activation", "norm_mean", "norm_sem", "norm_sd", "density", "distinct_states",
    "cosine_mean", "cosine_sem", "cosine_sd", "velocity_mean", "velocity_sem", "velocity_sd",
]


def transition_type(transition: int) -> str:
    """``within`` for 2l -> 2l+1 (attention update), ``cross`` for 2l+1 -> 2l+2 (MLP update)."""
    return "within" if transition % 2 == 0 else "cross"


class LayerSums:
    """Running sums over units of one condition, fed one unit block (N, S, U) at a time."""

    def __init__(self, n_samples: int, n_sublayers: int, n_units: int):
        self.n_units = n_units
        self.abs_sum = np.zeros(n_sublayers)
        self.squared_norm = np.zeros((n_samples, n_sublayers))
        self.dot = np.zeros((n_samples, n_sublayers - 1))
        self.squared_step = np.zeros((n_samples, n_sublayers - 1))
        self.mean_activation = np.zeros((n_sublayers, n_units))

        # per sublayer, a label per sample: equal labels = equal states on the units seen so far
        self.state_labels = np.zeros((n_sublayers, n_samples), dtype=np.int64)

    def add(self, block: np.ndarray, unit_start: int) -> None:
        for sublayer in range(block.shape[1]):
            self.state_labels[sublayer] = refine_labels(self.state_labels[sublayer], block[:, sublayer])
        self.abs_sum += np.abs(block).sum(axis=(0, 2))
        self.squared_norm += np.square(block).sum(axis=2)
        self.dot += (block[:, :-1] * block[:, 1:]).sum(axis=2)
        self.squared_step += np.square(block[:, 1:] - block[:, :-1]).sum(axis=2)
        self.mean_activation[:, unit_start : unit_start + block.shape[2]] = block.mean(axis=0)


def refine_labels(labels: np.ndarray, values: np.ndarray) -> np.ndarray:
    """Labels 0..k-1 of the distinct rows of ``[labels, values]``: (N,), (N, U) -> (N,).

    Feeding a sublayer's unit blocks one after the other leaves equal labels exactly on
    the samples whose states are equal on every unit (exact float equality).
    """
    rows = np.column_stack([labels.astype(np.float64), values])
    return np.unique(rows, axis=0, return_inverse=True)[1].reshape(-1).astype(np.int64)


def distinct_states(acts: np.ndarray) -> np.ndarray:
    """Number of distinct state vectors (rows) of each sublayer: (N, S, D) -> (S,) int."""
    labels = np.zeros(acts.shape[0], dtype=np.int64)
    return np.array([len(np.unique(refine_labels(labels, acts[:, s]))) for s in range(acts.shape[1])])


def _mean_sem_sd(values: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Mean, standard error of the mean and standard deviation (ddof 1) over samples (axis 0)."""
    sd = values.std(axis=0, ddof=1)
    return values.mean(axis=0), sd / np.sqrt(values.shape[0]), sd


def rows_from_sums(sums: LayerSums, condition: str, names: list[str], density_threshold: float) -> list[dict]:
    """The CSV rows (one per sublayer, one per transition) of one condition."""
    n_samples, n_sublayers = sums.squared_norm.shape
    norm = np.sqrt(sums.squared_norm)
    with np.errstate(invalid="ignore", divide="ignore"):
        cosine = sums.dot / (norm[:, :-1] * norm[:, 1:])
    velocity = np.sqrt(sums.squared_step)
    norm_mean, norm_sem, norm_sd = _mean_sem_sd(norm)
    cosine_mean, cosine_sem, cosine_sd = _mean_sem_sd(cosine)
    velocity_mean, velocity_sem, velocity_sd = _mean_sem_sd(velocity)
    density = (np.abs(sums.mean_activation) > density_threshold).mean(axis=1)
    rows = []
    for sublayer in range(n_sublayers):
        rows.append({
            "condition": condition, "kind": "sublayer", "index": sublayer, "name": names[sublayer],
            "layer": sublayer // 2, "site": names[sublayer].split(".")[-1],
            "mean_abs_activation": sums.abs_sum[sublayer] / (n_samples * sums.n_units),
            "norm_mean": norm_mean[sublayer], "norm_sem": norm_sem[sublayer], "norm_sd": norm_sd[sublayer],
            "density": density[sublayer],
            "distinct_states": int(sums.state_labels[sublayer].max()) + 1,
        })
    for transition in range(n_sublayers - 1):
        rows.append({
            "condition": condition, "kind": "transition", "index": transition,
            "name": f"{names[transition]}->{names[transition + 1]}", "layer": transition // 2,
            "transition_type": transition_type(transition),
            "cosine_mean": cosine_mean[transition], "cosine_sem": cosine_sem[transition], "cosine_sd": cosine_sd[transition],
            "velocity_mean": velocity_mean[transition], "velocity_sem": velocity_sem[transition],
            "velocity_sd": velocity_sd[transition],
        })
    return rows


def layer_stats_from_arrays(
    activations: Mapping[str, np.ndarray], density_threshold: float, names: list[str] | None = None
) -> pd.DataFrame:
    """The layer-statistics table of in-memory activations {condition: (N, 2L, D)}."""
    rows = []
    for condition, acts in activations.items():
        acts = np.asarray(acts, dtype=np.float64)
        _check_block(acts, 0, condition)
        sums = LayerSums(*acts.shape)
        sums.add(acts, 0)
        rows += rows_from_sums(sums, condition, names or default_sublayer_names(acts.shape[1] // 2), density_threshold)
    return pd.DataFrame(rows, columns=COLUMNS)


def _check_block(block: np.ndarray, unit_start: int, condition: str) -> None:
    n_samples, n_sublayers, n_units = block.shape
    unit_range = f"units {unit_start}-{unit_start + n_units - 1}"
    if n_samples < MIN_SAMPLES:
        raise UnitStatsInputError(
            f"activations '{condition}' has {n_samples} samples; layer_stats needs at least {MIN_SAMPLES}."
        )
    if n_sublayers < 2:
        raise UnitStatsInputError(f"activations '{condition}' has {n_sublayers} sublayer(s); layer_stats needs at least 2.")
    if not np.isfinite(block).all():
        sample, sublayer, unit = np.argwhere(~np.isfinite(block))[0]
        raise UnitStatsInputError(
            f"activations '{condition}' has NaN or inf values in {unit_range} (first: unit "
            f"{unit + unit_start}, sublayer {sublayer}, sample {sample}); every activation must be finite."
        )


def _unit_blocks(array, condition: str):
    """Yield (unit_start, float64 block (N, S, chunk)) over the unit chunks of ``array``."""
    step = array.chunks[2]
    for start in tqdm(range(0, array.shape[2], step), desc=f"layer_stats {condition}", unit="chunk"):
        yield start, np.asarray(array[:, :, start : start + step], dtype=np.float64)


def layer_stats(store_path: str | Path, density_threshold: float) -> pd.DataFrame:
    """The layer-statistics table of ``activations.zarr``, read one unit chunk at a time.

    A first pass checks every chunk (finite values, enough samples) before any compute.
    """
    group = open_group(store_path)
    for condition in CONDITIONS:
        if condition not in group:
            raise UnitStatsInputError(f"{store_path} has no array '{condition}'; expected {', '.join(CONDITIONS)}.")
    for condition in CONDITIONS:
        for start, block in _unit_blocks(group[condition], condition):
            _check_block(block, start, condition)
    rows = []
    for condition in CONDITIONS:
        array = group[condition]
        n_samples, n_sublayers, n_units = array.shape
        names = list(group.attrs.get("sublayer_names") or default_sublayer_names(n_sublayers // 2))
        sums = LayerSums(n_samples, n_sublayers, n_units)
        for start, block in _unit_blocks(array, condition):
            sums.add(block, start)
        rows += rows_from_sums(sums, condition, names, density_threshold)
    return pd.DataFrame(rows, columns=COLUMNS)


def read_layer_stats(path: str | Path, n_sublayers: int | None = None, conditions=CONDITIONS) -> pd.DataFrame:
    """``layer_stats.csv`` as written by :func:`rsdyn.units.run.run_layer_stats`, checked:
    its checksum and row count against its manifest, its columns, and, for each of
    ``conditions``, every sublayer 0..S-1 and transition 0..S-2 (S = ``n_sublayers`` when
    given, else the file's own); UnitStatsInputError naming the file and the repair."""
    from rsdyn.core.manifest import check_output, expected_rows, repair_advice

    path = Path(path)
    check_output(path)
    advice = repair_advice([path])
    try:
        table = pd.read_csv(path)
    except (ValueError, OSError, UnicodeDecodeError) as err:  # pandas' parser and empty-data errors are ValueErrors
        raise UnitStatsInputError(f"{path} cannot be read as a table ({type(err).__name__}: {err}); {advice}.") from None
    missing = [column for column in COLUMNS if column not in table.columns]
    if missing:
        raise UnitStatsInputError(f"{path} lacks the column(s) {', '.join(missing)}; {advice}.")
    written = expected_rows(path)
    if written is not None and written != len(table):
        raise UnitStatsInputError(f"{path} has {len(table)} rows where {written} were written; {advice}.")
    required = {"sublayer": ["index", "norm_mean", "density"], "transition": ["index", "cosine_mean", "velocity_mean"]}
    for kind, columns in required.items():
        lacking = table[(table["kind"] == kind) & table[columns].isna().any(axis=1)]
        if not lacking.empty:
            raise UnitStatsInputError(
                f"{path} is incomplete: row {int(lacking.index[0]) + 2} lacks its {kind} values; {advice}."
            )
    for condition in conditions:
        rows = table[table["condition"] == condition]
        sublayers = sorted(rows.loc[rows["kind"] == "sublayer", "index"].astype(int))
        transitions = sorted(rows.loc[rows["kind"] == "transition", "index"].astype(int))
        if rows.empty:
            raise UnitStatsInputError(f"{path} is incomplete: it has no rows of condition '{condition}'; {advice}.")
        count = n_sublayers if n_sublayers is not None else max(sublayers, default=0) + 1
        if sublayers != list(range(count)) or transitions != list(range(count - 1)):
            raise UnitStatsInputError(
                f"{path} is incomplete: condition '{condition}' has {len(sublayers)} sublayer and {len(transitions)} "
                f"transition rows where {count} and {count - 1} are expected; {advice}."
            )
    return table
