"""The spectra of one sequence's sublayer Jacobians, and of a whole ``jacobian.zarr``
design, its sequences in forked worker processes (see :func:`run_tasks`).

Per sequence (:func:`sequence_spectra`) the Jacobians are computed one transition at a
time (:func:`rsdyn.jacobian.jacobian.transition_jacobians`); each goes to the spectra device
and dtype, gets its per-matrix spectra (:func:`rsdyn.jacobian.spectra.matrix_spectra`) and
multiplies the cumulative product (:class:`rsdyn.jacobian.spectra.ProductChain`), and, for
the sequences that have surrogates, the surrogate updates are drawn from it
(:mod:`rsdyn.jacobian.surrogates`) and treated the same way. Nothing of size D x D is
kept beyond the current transition.

The design (:func:`design_groups`): the trained weights on every chosen sequence, the
surrogates on the baseline sequences, and a freshly initialised model per init seed on
the baseline sequences. Sequences are tasks for ``workers`` forked processes (on the CPU),
each with its own copy of the model (a sublayer map replaces modules' forwards while it
runs) and ``threads // workers`` torch threads, so a task's numbers do not depend on
which process ran it, nor on ``workers`` at a given number of torch threads per task.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from rsdyn.core.jobs import progress
from rsdyn.core.threads import cpu_seconds, forked_map, torch_threads
from rsdyn.jacobian.jacobian import (
    N_LYAPUNOV,
    SCALARS,
    VECTORS,
    initial_model,
    product_depths,
    transition_jacobians,
    verify_chain,
)
from rsdyn.jacobian.spectra import ProductChain, matrix_spectra, singular_values, stack_cumulative
from rsdyn.jacobian.surrogates import generator, norm_matched, surrogate_seed, svd_matched
from rsdyn.models.adapters import decoder_layers

log = logging.getLogger(__name__)

WEIGHTS = "weights"  # the group key of the differentiated model's own rows in sequence_spectra


@dataclass(frozen=True)
class SpectraOptions:
    """How one sequence's Jacobians and spectra are computed (the ``jacobian`` section, resolved)."""

    family: str = "auto"
    mode: str = "rev"
    chunk_size: int | None = None
    attention: str = "last_token"
    mlp: str = "gated"
    spectra_device: str = "cpu"
    spectra_dtype: torch.dtype = torch.float32
    seed: int = 0
    surrogates: tuple[str, ...] = ()
    surrogate_draws: int = 1


def sequence_spectra(
    model, ids: np.ndarray, corpus_row: int, options: SpectraOptions, with_surrogates: bool = False
) -> tuple[dict[str, list[dict[str, np.ndarray]]], float]:
    """The rows of one sequence: ``({WEIGHTS: [row], kind: [row per draw] ...}, chain
    difference)``; surrogate kinds only ``with_surrogates``. A row holds the per-matrix
    spectra of every transition ``(S[, D])`` and the product's at the product depths ``(P[, D])``
    (:func:`rsdyn.jacobian.jacobian.product_depths`). The chain of states is checked against
    a plain forward (:func:`rsdyn.jacobian.jacobian.verify_chain`)."""
    device, dtype = options.spectra_device, options.spectra_dtype
    kinds = tuple(options.surrogates) if with_surrogates else ()
    keys = [(WEIGHTS, 0)] + [(kind, draw) for kind in kinds for draw in range(options.surrogate_draws)]
    chains = {key: ProductChain() for key in keys}
    matrices: dict[tuple[str, int], list] = {key: [] for key in keys}
    products: dict[tuple[str, int], list] = {key: [] for key in keys}
    rngs = {(kind, draw): generator(surrogate_seed(options.seed, corpus_row, kind, draw), device) for kind, draw in keys[1:]}
    n_transitions = 2 * len(decoder_layers(model))
    depths = set(product_depths(n_transitions))

    def record(key, jacobian, transition):
        matrices[key].append(matrix_spectra(jacobian))
        chains[key].step(jacobian)
        if transition in depths:
            products[key].append(chains[key].spectra())

    states = []
    for transition, (jacobian, state) in enumerate(
        transition_jacobians(model, ids, options.family, options.mode, options.chunk_size, options.attention, options.mlp), start=-1
    ):
        states.append(state)
        if jacobian is None:
            continue
        matrix = jacobian.to(device=device, dtype=dtype)
        record((WEIGHTS, 0), matrix, transition)
        if not kinds:
            continue
        eye = torch.eye(matrix.shape[-1], dtype=dtype, device=device)
        update = matrix - eye
        singular = singular_values(update) if "svd_matched" in kinds else None
        frobenius = update.square().sum().sqrt()
        for (kind, draw), rng in rngs.items():
            surrogate = svd_matched(singular, rng) if kind == "svd_matched" else norm_matched(frobenius, update.shape[-1], rng)
            record((kind, draw), surrogate + eye, transition)
    difference = verify_chain(model, ids, torch.stack(states), options.family)
    out: dict[str, list[dict[str, np.ndarray]]] = {}
    for key in keys:
        row = {name: torch.stack([entry[name] for entry in matrices[key]]) for name in matrices[key][0]}
        row.update(stack_cumulative(products[key]))
        row["lyapunov"] = row["lyapunov"][..., :N_LYAPUNOV]
        out.setdefault(key[0], []).append({name: value.cpu().numpy() for name, value in row.items()})
    return out, difference


def _vector_dtype(array: np.ndarray, double: bool) -> np.ndarray:
    if np.iscomplexobj(array):
        return array.astype(np.complex128 if double else np.complex64)
    return array.astype(np.float64 if double else np.float32)


def stack_rows(rows: Sequence[Mapping[str, np.ndarray]], sequence: Sequence[int], draw: Sequence[int], double: bool = False) -> dict[str, np.ndarray]:
    """One group of ``jacobian.zarr`` from its rows: every quantity ``(rows, S[, D])``, each
    scalar also as ``{name}_mean`` and ``{name}_std`` ``(S,)`` over rows (std with ddof 1; 0
    for one row), ``sequence`` and ``draw`` ``(rows,)``. Vectors are float32/complex64
    unless ``double``."""
    group: dict[str, np.ndarray] = {"sequence": np.asarray(sequence, dtype=np.int64), "draw": np.asarray(draw, dtype=np.int64)}
    for name in SCALARS:
        values = np.stack([row[name] for row in rows]).astype(np.float64)
        group[name] = values
        group[f"{name}_mean"] = values.mean(axis=0)
        group[f"{name}_std"] = values.std(axis=0, ddof=1) if len(values) > 1 else np.zeros(values.shape[1])
    for name in VECTORS:
        group[name] = _vector_dtype(np.stack([row[name] for row in rows]), double)
    return group


# --------------------------------------------------------------------------- the design over workers


@dataclass
class Task:
    """One sequence of one set of weights: its position among the chosen sequences."""

    position: int
    with_surrogates: bool = False
    result: dict[str, list[dict[str, np.ndarray]]] = field(default_factory=dict)


def run_tasks(
    model, tasks: Sequence[Task], run: Callable[[Any, Task], None], workers: int = 1, threads: int = 1, desc: str = "jacobians"
) -> None:
    """``run(model, task)`` for every task, each on ``threads // workers`` torch threads,
    in ``workers`` forked processes when the model is on the CPU (one after another
    otherwise); progress over tasks.

    Processes, not threads: torch.func's transforms (``jvp``, ``jacrev``) keep one
    interpreter stack per process, and two Python threads transforming at once fail
    ("Trying to access a forward AD level with an invalid index") or, worse, return wrong
    Jacobians (a spectral radius 1 % off in CI). Each task runs on the same number of torch
    threads whichever process runs it, so the numbers do not depend on ``workers``."""
    workers = max(1, min(int(workers), len(tasks)))
    per_task = max(1, int(threads) // workers)
    on_cpu = all(parameter.device.type == "cpu" for parameter in model.parameters())
    if workers == 1 or not on_cpu:
        with torch_threads(per_task):
            for task in progress(tasks, total=len(tasks), desc=desc, unit="seq"):
                run(model, task)
        return

    def work(task: Task) -> dict[str, list[dict[str, np.ndarray]]]:
        run(model, task)
        return task.result

    for index, result in progress(forked_map(work, list(tasks), workers, per_task), total=len(tasks), desc=desc, unit="seq"):
        tasks[index].result = result


def design_groups(
    model,
    sequences: Sequence[np.ndarray],
    corpus_rows: Sequence[int],
    baseline: Sequence[int],
    init_seeds: Sequence[int],
    options: SpectraOptions,
    workers: int = 1,
    threads: int = 1,
) -> tuple[dict[str, dict[str, np.ndarray]], dict[str, dict[str, float]]]:
    """Every group of ``jacobian.zarr`` and the wall and CPU seconds (of this process and its workers) each took
    (``{"trained": {"wall_s", "cpu_s"}, ...}``, trained including the surrogates): ``trained`` on every
    sequence; each kind of ``options.surrogates`` (``options.surrogate_draws`` draws) on the
    ``baseline`` positions, from the trained Jacobians; ``initial`` on the ``baseline``
    positions, for each of ``init_seeds`` (no initial group when it is empty)."""
    double = options.spectra_dtype == torch.float64
    baseline_set = {int(position) for position in baseline}

    def run(network, task: Task) -> None:
        start = time.perf_counter()
        position = task.position
        task.result, difference = sequence_spectra(network, sequences[position], int(corpus_rows[position]), options, task.with_surrogates)
        log.info("sequence %d (%d tokens): %.1f s, chain vs forward %.1e", position, len(sequences[position]), time.perf_counter() - start, difference)

    groups: dict[str, dict[str, np.ndarray]] = {}
    seconds: dict[str, dict[str, float]] = {}
    start, cpu = time.perf_counter(), cpu_seconds()
    tasks = [Task(position, bool(options.surrogates) and position in baseline_set) for position in range(len(sequences))]
    ordered = sorted(tasks, key=lambda task: not task.with_surrogates)  # the longest tasks first
    run_tasks(model, ordered, run, workers, threads, desc="trained")
    groups["trained"] = stack_rows([task.result[WEIGHTS][0] for task in tasks], range(len(tasks)), [0] * len(tasks), double)
    for kind in options.surrogates:
        rows = [(task.position, draw, row) for task in tasks if task.with_surrogates for draw, row in enumerate(task.result[kind])]
        groups[kind] = stack_rows([row for *_, row in rows], [p for p, *_ in rows], [d for _, d, _ in rows], double)
    seconds["trained"] = {"wall_s": time.perf_counter() - start, "cpu_s": cpu_seconds() - cpu}
    if init_seeds:
        start, cpu = time.perf_counter(), cpu_seconds()
        rows = []
        for index, seed in enumerate(init_seeds):
            seed_tasks = [Task(int(position)) for position in baseline]
            run_tasks(initial_model(model, int(seed)), seed_tasks, run, workers, threads, desc=f"initial seed {seed}")
            rows += [(task.position, index, task.result[WEIGHTS][0]) for task in seed_tasks]
        groups["initial"] = stack_rows([row for *_, row in rows], [p for p, *_ in rows], [d for _, d, _ in rows], double)
        seconds["initial"] = {"wall_s": time.perf_counter() - start, "cpu_s": cpu_seconds() - cpu}
    return groups, seconds
