"""Per-unit dynamics over depth (Fig. 1C, 1D, 1G/H and Fig. 2 of the paper).

Every kernel takes activations of shape ``(n_samples, n_sublayers, n_units)`` (float64)
and works on all units at once. Transitions are consecutive sublayers ``l -> l + 1``.

- ``corr_consecutive``: Pearson r across samples between sublayer l and l + 1.
- ``corr_pairs_hist``: per unit, the fraction of sublayer pairs l < m whose r falls in
  each bin of [0, 1] (pairs with r < 0 are in no bin).
- ``mi_kde``: the paper's Gaussian-KDE mutual information in nats, defined as the
  resubstitution estimate of ``scipy.stats.gaussian_kde`` (Scott bandwidth, full
  covariance for the joint): mean over samples of
  ``log((p(x, y) + eps) / (p(x) p(y) + eps))``. On CPU the kernel sums run in float32
  in fused numba kernels (each sample pair once) when numba is installed, else in
  blocked torch ops; float64 and CUDA use torch.
- ``mi_ksg``: Kraskov-Stoegbauer-Grassberger estimator 1 (max-norm, k neighbours) on
  x and y scaled to unit variance, in nats, not clipped at 0.
- ``mi_gaussian``: ``-0.5 ln(1 - r^2)``, the MI of a bivariate Gaussian with that r.
- ``rotation_number``: R of PAPER.md Fig. 2 (signed turns of the tangent of the phase
  portrait ``(a_l - a_0, g_l - g_0)`` with ``g = np.gradient(a)`` over sublayers),
  with a layer-shuffle null and a smoother surrogate null.

``compute_shard`` runs all of them on one unit range of ``activations.zarr``;
``gather`` joins the shards into ``unit_stats.zarr``.
"""

from __future__ import annotations

import contextlib
import math
import time
from collections.abc import Iterator, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
import torch
from scipy.special import digamma
from tqdm.auto import tqdm

from rsdyn.store import open_group

try:  # optional: fused CPU kernels for the KDE sums (blocked torch ops without it)
    import numba
    from llvmlite import ir as llvm_ir
    from numba.extending import intrinsic as numba_intrinsic
except ImportError:  # pragma: no cover - depends on the environment
    numba = None

CONDITIONS = ("original", "shuffled")
MIN_SAMPLES = 3

#: arrays whose unit axis is not the last one (gather concatenates along it)
UNIT_AXIS = {"corr_pairs_hist": 0}

#: units processed together inside a shard (bounds memory; never changes the numbers)
UNIT_BLOCK = 16

DEFAULT_SETTINGS: dict[str, Any] = {
    "device": "cpu",
    "kde_precision": "auto",
    "corr_bins": 20,
    "mi_eps": 1e-10,
    "ksg_k": 3,
    "n_shuffles": 1000,
    "surrogate": "phase",
    "per_sample": False,
    "seed": 0,
}


# --------------------------------------------------------------------------- inputs


class UnitStatsInputError(ValueError):
    """The activations or the shard layout cannot be analysed; the message says why."""


def split_units(n_units: int, shards: int) -> list[tuple[int, int]]:
    """``shards`` contiguous ``(start, stop)`` unit ranges covering ``0..n_units``.

    The first ``n_units % shards`` ranges hold one unit more than the others.
    """
    if shards < 1:
        raise UnitStatsInputError(f"unit_stats.shards = {shards}; it must be at least 1.")
    if shards > n_units:
        raise UnitStatsInputError(
            f"unit_stats.shards = {shards} exceeds the number of units d_model = {n_units}; "
            f"use at most {n_units} shards."
        )
    base, extra = divmod(n_units, shards)
    sizes = [base + (1 if index < extra else 0) for index in range(shards)]
    stops = np.cumsum(sizes).tolist()
    return [(stop - size, stop) for stop, size in zip(stops, sizes)]


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


def check_settings(settings: Mapping[str, Any]) -> dict[str, Any]:
    """The settings with defaults filled in; raises on a value the kernels cannot use."""
    settings = {**DEFAULT_SETTINGS, **settings}
    allowed = {"surrogate": ("phase", "circular"), "kde_precision": ("auto", "float32", "float64"), "device": ("auto", "cpu", "cuda")}
    for key, values in allowed.items():
        if settings[key] not in values:
            raise UnitStatsInputError(
                f"unit_stats.{key} = {settings[key]!r}; allowed values are {', '.join(map(repr, values))}."
            )
    for key, minimum in (("corr_bins", 2), ("ksg_k", 1), ("n_shuffles", 1)):
        if int(settings[key]) < minimum:
            raise UnitStatsInputError(f"unit_stats.{key} = {settings[key]!r}; it must be at least {minimum}.")
    if not settings["mi_eps"] > 0:
        raise UnitStatsInputError(f"unit_stats.mi_eps = {settings['mi_eps']!r}; it must be positive.")
    resolve_device(settings["device"])
    return settings


def resolve_device(device: str) -> torch.device:
    """The torch device of ``unit_stats.device`` (``auto`` -> CUDA when visible)."""
    from rsdyn.models import resolve_device as resolve_model_device

    try:
        return torch.device(resolve_model_device(device, "unit_stats.device"))
    except ValueError as err:
        raise UnitStatsInputError(str(err)) from None


def kde_dtype(precision: str, device: torch.device) -> torch.dtype:
    """Dtype of the kernel sums: ``auto`` = float64 on CUDA, float32 on CPU."""
    if precision == "auto":
        return torch.float64 if device.type == "cuda" else torch.float32
    return {"float32": torch.float32, "float64": torch.float64}[precision]


@contextlib.contextmanager
def torch_threads(n_threads: int) -> Iterator[None]:
    """Run torch CPU ops on ``n_threads`` threads inside the block."""
    previous = torch.get_num_threads()
    torch.set_num_threads(n_threads)
    try:
        yield
    finally:
        torch.set_num_threads(previous)


# --------------------------------------------------------------------------- correlation


def _standardize(acts: np.ndarray) -> np.ndarray:
    """(N, S, U) -> centred and scaled so that sum over samples of z^2 = 1."""
    centred = acts - acts.mean(axis=0)
    norm = np.sqrt((centred * centred).sum(axis=0))
    with np.errstate(invalid="ignore", divide="ignore"):
        return centred / norm


def corr_consecutive(acts: np.ndarray) -> np.ndarray:
    """Pearson r across samples between sublayer l and l + 1: (N, S, U) -> (S - 1, U)."""
    z = _standardize(acts)
    return (z[:, :-1] * z[:, 1:]).sum(axis=0)


def corr_matrix(acts: np.ndarray) -> np.ndarray:
    """Pearson r between every pair of sublayers, per unit: (N, S, U) -> (U, S, S)."""
    z = np.ascontiguousarray(_standardize(acts).transpose(2, 1, 0))  # (U, S, N)
    n_sublayers = z.shape[1]
    out = np.empty((z.shape[0], n_sublayers, n_sublayers))
    for sublayer in range(n_sublayers):
        out[:, sublayer, :] = (z[:, sublayer : sublayer + 1, :] * z).sum(axis=-1)
    return out


def histogram_fractions(values: np.ndarray, bins: int) -> np.ndarray:
    """Per row, the fraction of values in each of ``bins`` equal bins of [0, 1].

    Bins are half-open except the last (as ``np.histogram``); values outside [0, 1]
    and NaN count in no bin but do count in the denominator. (R, M) -> (R, bins).
    """
    edges = np.linspace(0.0, 1.0, bins + 1)
    index = np.searchsorted(edges, values, side="right") - 1
    index = np.where(values == 1.0, bins - 1, index)
    inside = (values >= 0.0) & (values <= 1.0)
    rows = np.broadcast_to(np.arange(values.shape[0])[:, None], values.shape)
    counts = np.zeros((values.shape[0], bins))
    np.add.at(counts, (rows[inside], index[inside]), 1.0)
    return counts / values.shape[1]


def corr_pairs_hist(acts: np.ndarray, bins: int) -> np.ndarray:
    """Per unit, fraction of sublayer pairs l < m with r in each bin of [0, 1]: (U, bins)."""
    matrix = corr_matrix(acts)
    upper = np.triu_indices(matrix.shape[1], k=1)
    return histogram_fractions(matrix[:, upper[0], upper[1]], bins)


def mi_gaussian(r: np.ndarray) -> np.ndarray:
    """MI (nats) of a bivariate Gaussian with correlation r: -0.5 ln(1 - r^2)."""
    with np.errstate(divide="ignore"):
        return -0.5 * np.log1p(-np.square(r))


# --------------------------------------------------------------------------- KDE MI

#: CPU float32 kernel sums run in fused numba kernels when numba is installed
#: ("numba"), else in blocked torch ops ("torch"); CUDA and float64 always use torch.
KDE_CPU_BACKEND = "numba" if numba is not None else "torch"

#: the numba kernels sum at most this many float32 terms before adding to a float64 total
#: (rows of the kernel matrix per column flush, columns per row chunk)
_NUMBA_ROW_BLOCK = 64
_NUMBA_CHUNK = 256
#: coordinate of the points that pad N to a multiple of 4 (far from every real point)
_NUMBA_PAD = 1e15

if numba is not None:

    @numba_intrinsic
    def _int32_bits_as_float32(typingctx, bits):
        """The float32 whose bit pattern is the int32 ``bits`` (an LLVM bitcast)."""

        def codegen(context, builder, signature, args):
            return builder.bitcast(args[0], llvm_ir.FloatType())

        return numba.types.float32(numba.types.int32), codegen

    @numba_intrinsic
    def _float32_bits_as_int32(typingctx, value):
        """The int32 with the bit pattern of the float32 ``value`` (an LLVM bitcast)."""

        def codegen(context, builder, signature, args):
            return builder.bitcast(args[0], llvm_ir.IntType(32))

        return numba.types.int32(numba.types.float32), codegen

    _LOG2_E = np.float32(1.4426950408889634)
    _LN2 = np.float32(math.log(2.0))
    _ROUND = np.float32(1.5 * 2**23)  # x + _ROUND has round(x) in its low mantissa bits
    # exp(r) on |r| <= ln(2)/2: degree 6, interpolated at the Chebyshev nodes (relative error 2e-8)
    _EXP_POLY = tuple(np.float32(c) for c in (0.0013941108481958508, 0.00837512593716383, 0.04166635125875473,
                                              0.16666415333747864, 0.5, 1.0, 1.0))
    _EXP_FLOOR_F32 = np.float32(-87.0)  # exp(-87) = 1.6e-38 is still a normal float32

    # no reassociation here: it would fold (x + _ROUND) - _ROUND
    @numba.njit(fastmath={"nnan", "ninf", "nsz", "contract"}, cache=True)
    def _exp_nonpositive_f32(t):
        """exp(t) in float32 for t in [-87, 0]: 2^k exp(r) with t = k ln 2 + r, |r| <= ln(2)/2.

        Relative error below 1.3e-7 for t >= -20 (2 float32 ulp) and 3.2e-7 down to -87
        (ln 2 rounded to float32 costs 2e-9 per unit of k); only arithmetic and bit
        operations, so the loops that call it vectorise.
        """
        shifted = t * _LOG2_E + _ROUND
        k = shifted - _ROUND  # round(t / ln 2), exactly
        r = t - k * _LN2
        c6, c5, c4, c3, c2, c1, c0 = _EXP_POLY
        p = (((((c6 * r + c5) * r + c4) * r + c3) * r + c2) * r + c1) * r + c0
        # add k to the exponent of p: the low bits of shifted hold k, << 23 moves them there
        return _int32_bits_as_float32(_float32_bits_as_int32(p) + (_float32_bits_as_int32(shifted) << np.int32(23)))

    @numba.njit(fastmath=True, cache=True)
    def _kernel_f32(du, dv):
        """exp(-(du^2 + dv^2)) in float32, the exponent floored at -87."""
        return _exp_nonpositive_f32(max(-(du * du + dv * dv), _EXP_FLOOR_F32))

    @numba.njit(fastmath=True, cache=True)
    def _upper_rows(u, v, column, total, i):
        """Rows i..i+3: their pairs among themselves and with every j >= i + 4 (also added to
        column[j]). Points are (u, v), or u alone when v is None: numba compiles one version
        per type of v and drops the untaken branches, so 1-D points cost no extra work."""
        zero = np.float32(0.0)
        u0, u1, u2, u3 = u[i], u[i + 1], u[i + 2], u[i + 3]
        v0, v1, v2, v3 = zero, zero, zero, zero
        if v is not None:
            v0, v1, v2, v3 = v[i], v[i + 1], v[i + 2], v[i + 3]
        k01, k02, k03 = _kernel_f32(u0 - u1, v0 - v1), _kernel_f32(u0 - u2, v0 - v2), _kernel_f32(u0 - u3, v0 - v3)
        k12, k13, k23 = _kernel_f32(u1 - u2, v1 - v2), _kernel_f32(u1 - u3, v1 - v3), _kernel_f32(u2 - u3, v2 - v3)
        total[i] += (k01 + k02) + k03
        total[i + 1] += (k01 + k12) + k13
        total[i + 2] += (k02 + k12) + k23
        total[i + 3] += (k03 + k13) + k23
        for start in range(i + 4, u.shape[0], _NUMBA_CHUNK):
            stop = min(start + _NUMBA_CHUNK, u.shape[0])
            u_tail, column_tail = u[start:stop], column[start:stop]
            v_tail = u_tail
            if v is not None:
                v_tail = v[start:stop]
            s0, s1, s2, s3 = zero, zero, zero, zero
            for j in range(u_tail.shape[0]):
                uj = u_tail[j]
                d0, d1, d2, d3 = u0 - uj, u1 - uj, u2 - uj, u3 - uj
                q0, q1, q2, q3 = d0 * d0, d1 * d1, d2 * d2, d3 * d3
                if v is not None:
                    vj = v_tail[j]
                    e0, e1, e2, e3 = v0 - vj, v1 - vj, v2 - vj, v3 - vj
                    q0, q1, q2, q3 = q0 + e0 * e0, q1 + e1 * e1, q2 + e2 * e2, q3 + e3 * e3
                k0 = _exp_nonpositive_f32(max(-q0, _EXP_FLOOR_F32))
                k1 = _exp_nonpositive_f32(max(-q1, _EXP_FLOOR_F32))
                k2 = _exp_nonpositive_f32(max(-q2, _EXP_FLOOR_F32))
                k3 = _exp_nonpositive_f32(max(-q3, _EXP_FLOOR_F32))
                s0 += k0
                s1 += k1
                s2 += k2
                s3 += k3
                column_tail[j] += (k0 + k1) + (k2 + k3)
            total[i] += s0
            total[i + 1] += s1
            total[i + 2] += s2
            total[i + 3] += s3

    @numba.njit(cache=True, nogil=True)
    def _numba_gaussian_sums(u, v, out):
        """out[r, i] = sum_j exp(-|p_ri - p_rj|^2), p = (u, v) (or u alone when v has no columns).

        The number of points must be a multiple of 4. Each pair i < j is evaluated once
        (float32), four rows at a time, and added to the sums of i and j; column partial
        sums over ``_NUMBA_ROW_BLOCK`` rows and row partial sums over ``_NUMBA_CHUNK``
        columns are float32, totals float64.
        """
        n_rows, n_points = u.shape
        if n_points % 4:
            raise ValueError("_numba_gaussian_sums needs a multiple of 4 points; pad them first.")
        two_dims = v.shape[1] == n_points
        column = np.empty(n_points, np.float32)
        total = np.empty(n_points, np.float64)
        for row in range(n_rows):
            u_row = u[row].copy()
            v_row = v[row].copy() if two_dims else u_row
            total[:] = 1.0  # the pair (i, i)
            for first in range(0, n_points, _NUMBA_ROW_BLOCK):
                column[first:] = 0.0
                for i in range(first, min(first + _NUMBA_ROW_BLOCK, n_points), 4):
                    if two_dims:
                        _upper_rows(u_row, v_row, column, total, i)
                    else:
                        _upper_rows(u_row, None, column, total, i)
                for j in range(first, n_points):
                    total[j] += column[j]
            out[row] = total


def _numba_kernel_sums(points: np.ndarray, workers: int) -> np.ndarray:
    """sum_j exp(-|p_i - p_j|^2) per point with the numba kernels: (R, N, d <= 2) -> (R, N) float64.

    The points are padded to a multiple of 4 with points ``_NUMBA_PAD`` away (each adds
    exp(-87) = 1.6e-38 to a real point's sum). Rows are split into ``workers``
    contiguous chunks run on as many threads; every row is computed by one thread in a
    fixed order, so the result does not depend on the number of threads.
    """
    n_rows, n_points, n_dims = points.shape
    padded = -(-n_points // 4) * 4
    coords = []
    for axis in range(n_dims):
        coord = np.full((n_rows, padded), _NUMBA_PAD, dtype=np.float32)
        coord[:, :n_points] = points[..., axis]
        coords.append(coord)
    u, v = coords[0], (coords[1] if n_dims == 2 else np.empty((n_rows, 0), np.float32))
    out = np.empty((n_rows, padded))
    bounds = np.linspace(0, n_rows, min(max(workers, 1), max(n_rows, 1)) + 1).astype(int)
    chunks = [(a, b) for a, b in zip(bounds[:-1], bounds[1:]) if b > a]
    if len(chunks) <= 1:
        _numba_gaussian_sums(u, v, out)
    else:
        with ThreadPoolExecutor(len(chunks)) as pool:
            list(pool.map(lambda chunk: _numba_gaussian_sums(u[chunk[0] : chunk[1]], v[chunk[0] : chunk[1]], out[chunk[0] : chunk[1]]), chunks))
    return out[:, :n_points]


def _kernel_row_sums(
    white: torch.Tensor, block: int = 128, rows_per_step: int = 16
) -> torch.Tensor:
    """For whitened points (R, N, d): sum_j exp(-|w_i - w_j|^2 / 2) per row i, float64.

    Only the upper block triangle is computed (the kernel matrix is symmetric); the
    kernel values are in ``white.dtype``, partial sums accumulate in float64. Work
    buffers are reused (cache-sized, no allocation per block).
    """
    n_rows, n_points, n_dims = white.shape
    out = torch.zeros(n_rows, n_points, dtype=torch.float64, device=white.device)
    starts = list(range(0, n_points, block))
    coords = [white[..., axis].contiguous() for axis in range(n_dims)]
    # exp below its underflow threshold takes a ~100x slower path: clamp the exponent
    # to a value whose exp is still normal (adds < 1e-34 to a sum that is >= 1)
    floor = -80.0 if white.dtype == torch.float32 else -700.0
    buffers: dict[tuple[int, ...], tuple[torch.Tensor, torch.Tensor]] = {}
    for first in range(0, n_rows, rows_per_step):
        columns = [coord[first : first + rows_per_step] for coord in coords]
        sums = out[first : first + rows_per_step]
        for position, a in enumerate(starts):
            left = [column[:, a : a + block, None] for column in columns]
            for b in starts[position:]:
                right = [column[:, None, b : b + block] for column in columns]
                shape = (left[0].shape[0], left[0].shape[1], right[0].shape[2])
                if shape not in buffers:
                    buffers[shape] = (torch.empty(shape, dtype=white.dtype, device=white.device),
                                      torch.empty(shape, dtype=white.dtype, device=white.device))
                kernel, scratch = buffers[shape]
                torch.sub(left[0], right[0], out=kernel).square_()
                for axis in range(1, n_dims):
                    torch.sub(left[axis], right[axis], out=scratch)
                    kernel.addcmul_(scratch, scratch)
                kernel.mul_(-0.5).clamp_(min=floor).exp_()
                sums[:, a : a + block] += kernel.sum(dim=2)
                if b != a:
                    sums[:, b : b + block] += kernel.sum(dim=1)
    return out


def _kernel_layout(device: torch.device, n_points: int) -> dict[str, int]:
    if device.type == "cuda":
        return {"block": n_points, "rows_per_step": 256}
    return {"block": 128, "rows_per_step": 16}


def _kernel_sums(white: np.ndarray, device: torch.device, precision: str) -> np.ndarray:
    """sum_j exp(-|w_i - w_j|^2 / 2) per point of whitened points (R, N, d) float64 -> (R, N) float64.

    CPU float32 with ``KDE_CPU_BACKEND == "numba"``: the fused numba kernels on
    ``torch.get_num_threads()`` threads; otherwise the blocked torch kernel.
    """
    dtype = kde_dtype(precision, device)
    if device.type == "cpu" and dtype == torch.float32 and KDE_CPU_BACKEND == "numba":
        return _numba_kernel_sums(white * math.sqrt(0.5), torch.get_num_threads())
    tensor = torch.from_numpy(np.ascontiguousarray(white)).to(device, dtype)
    return _kernel_row_sums(tensor, **_kernel_layout(device, white.shape[1])).cpu().numpy()


def kde_marginal_density(
    x: np.ndarray, device: str | torch.device = "cpu", precision: str = "auto"
) -> np.ndarray:
    """1-D Gaussian KDE (Scott bandwidth) of each row, evaluated at its own samples.

    Same as ``scipy.stats.gaussian_kde(row)(row)`` for each row of x (R, N); density
    in 1 / (units of x). Rows with zero variance give NaN.
    """
    device = torch.device(device) if isinstance(device, str) else device
    n_rows, n_points = x.shape
    factor = n_points ** (-1.0 / 5.0)
    centred = x - x.mean(axis=1, keepdims=True)
    std = np.sqrt((centred * centred).sum(axis=1) / (n_points - 1))
    degenerate = ~(std > 0)
    scale = np.where(degenerate, 1.0, std * factor)
    sums = _kernel_sums((centred / scale[:, None])[..., None], device, precision)
    density = sums / (n_points * math.sqrt(2.0 * math.pi) * scale[:, None])
    density[degenerate] = np.nan
    return density


def kde_joint_density(
    x: np.ndarray, y: np.ndarray, device: str | torch.device = "cpu", precision: str = "auto"
) -> np.ndarray:
    """2-D Gaussian KDE (Scott bandwidth, full covariance) of rows (x_r, y_r) at their samples.

    Same as ``scipy.stats.gaussian_kde(np.vstack([x_r, y_r]))`` evaluated at the data,
    per row; x, y (R, N). Rows with a singular covariance give NaN.
    """
    device = torch.device(device) if isinstance(device, str) else device
    n_points = x.shape[1]
    factor_sq = n_points ** (-2.0 / 6.0)
    xc = x - x.mean(axis=1, keepdims=True)
    yc = y - y.mean(axis=1, keepdims=True)
    cxx = (xc * xc).sum(axis=1) / (n_points - 1) * factor_sq
    cyy = (yc * yc).sum(axis=1) / (n_points - 1) * factor_sq
    cxy = (xc * yc).sum(axis=1) / (n_points - 1) * factor_sq
    # Cholesky factor [[l11, 0], [l21, l22]] of the kernel covariance
    with np.errstate(invalid="ignore", divide="ignore"):
        l11 = np.sqrt(cxx)
        l21 = cxy / l11
        l22 = np.sqrt(cyy - l21 * l21)
    degenerate = ~((l11 > 0) & (l22 > 0))
    l11 = np.where(degenerate, 1.0, l11)
    l21 = np.where(degenerate, 0.0, l21)
    l22 = np.where(degenerate, 1.0, l22)
    w1 = xc / l11[:, None]
    w2 = (yc - l21[:, None] * w1) / l22[:, None]
    sums = _kernel_sums(np.stack([w1, w2], axis=-1), device, precision)
    density = sums / (n_points * 2.0 * math.pi * (l11 * l22)[:, None])
    density[degenerate] = np.nan
    return density


def _mi_from_densities(p_xy: np.ndarray, p_x: np.ndarray, p_y: np.ndarray, eps: float) -> np.ndarray:
    return np.mean(np.log((p_xy + eps) / (p_x * p_y + eps)), axis=-1)


def mi_kde_pairs(
    x: np.ndarray,
    y: np.ndarray,
    eps: float = 1e-10,
    device: str | torch.device = "cpu",
    precision: str = "auto",
) -> np.ndarray:
    """Gaussian-KDE MI (nats) of each row pair (x_r, y_r); x, y (R, N) -> (R,)."""
    p_x = kde_marginal_density(x, device, precision)
    p_y = kde_marginal_density(y, device, precision)
    p_xy = kde_joint_density(x, y, device, precision)
    return _mi_from_densities(p_xy, p_x, p_y, eps)


def mi_kde(
    acts: np.ndarray,
    eps: float = 1e-10,
    device: str | torch.device = "cpu",
    precision: str = "auto",
) -> np.ndarray:
    """Gaussian-KDE MI (nats) between consecutive sublayers: (N, S, U) -> (S - 1, U).

    The marginal density of sublayer l is computed once and shared by the two
    transitions that touch it.
    """
    n_samples, n_sublayers, n_units = acts.shape
    rows = np.ascontiguousarray(acts.transpose(1, 2, 0))  # (S, U, N)
    marginal = kde_marginal_density(rows.reshape(-1, n_samples), device, precision)
    marginal = marginal.reshape(n_sublayers, n_units, n_samples)
    joint = kde_joint_density(
        rows[:-1].reshape(-1, n_samples), rows[1:].reshape(-1, n_samples), device, precision
    ).reshape(n_sublayers - 1, n_units, n_samples)
    return _mi_from_densities(joint, marginal[:-1], marginal[1:], eps)


# --------------------------------------------------------------------------- KSG MI


def _count_strictly_within(sorted_values: torch.Tensor, radius: torch.Tensor) -> torch.Tensor:
    """Per row and point i: #{j : |v_j - v_i| < radius_i} over the row's sorted values (incl. i)."""
    n_points = sorted_values.shape[1]

    def at(index: torch.Tensor) -> torch.Tensor:
        return torch.gather(sorted_values, 1, index.clamp(0, n_points - 1))

    centre = sorted_values
    hi = torch.searchsorted(sorted_values, centre + radius, side="left")
    lo = torch.searchsorted(sorted_values, centre - radius, side="right")
    # one-step fix-ups so that the predicate is exactly |v_j - v_i| < radius_i
    hi = hi + ((hi < n_points) & ((at(hi) - centre) < radius)).long()
    hi = hi - ((hi > 0) & ~((at(hi - 1) - centre) < radius)).long()
    lo = lo - ((lo > 0) & ((centre - at(lo - 1)) < radius)).long()
    lo = lo + ((lo < n_points) & ~((centre - at(lo)) < radius)).long()
    return hi - lo


def _insert_smallest(smallest: list[torch.Tensor], values: torch.Tensor) -> None:
    """Keep, elementwise, the k smallest values seen (``smallest`` ascending, in place)."""
    for rank in range(len(smallest) - 1, 0, -1):
        torch.minimum(smallest[rank], torch.maximum(smallest[rank - 1], values), out=smallest[rank])
    torch.minimum(smallest[0], values, out=smallest[0])


def _kth_neighbour_distance(
    xs: torch.Tensor, ys: torch.Tensor, k: int, window: int = 32, check_every: int = 8, rows_per_step: int = 64
) -> torch.Tensor:
    """Max-norm distance to the k-th nearest other point, rows sorted by x: (R, N) -> (R, N).

    Candidates are scanned outwards in x-order. All points first see their ``window``
    nearest x-neighbours on each side; a point is finished once the x-gap to its next
    unseen neighbour on both sides is at least its current k-th distance. Unfinished
    points continue alone, ``check_every`` offsets at a time. Exact.
    """
    n_rows, n_points = xs.shape
    inf = torch.tensor(torch.inf, dtype=xs.dtype, device=xs.device)
    smallest = [torch.full((n_rows, n_points), torch.inf, dtype=xs.dtype, device=xs.device) for _ in range(k)]
    window = min(window, n_points - 1)
    for first in range(0, n_rows, rows_per_step):  # cache-sized row chunks
        rows = slice(first, first + rows_per_step)
        x_rows, y_rows, best_rows = xs[rows], ys[rows], [s[rows] for s in smallest]
        for offset in range(1, window + 1):
            distance = torch.maximum(x_rows[:, offset:] - x_rows[:, :-offset], (y_rows[:, offset:] - y_rows[:, :-offset]).abs_())
            _insert_smallest([s[:, : n_points - offset] for s in best_rows], distance)
            _insert_smallest([s[:, offset:] for s in best_rows], distance)
    result = smallest[-1].reshape(-1).clone()
    if window >= n_points - 1:
        return result.reshape(n_rows, n_points)

    flat_x, flat_y = xs.reshape(-1), ys.reshape(-1)
    position = torch.arange(n_points, device=xs.device).repeat(n_rows)
    base = torch.arange(n_rows, device=xs.device).repeat_interleave(n_points) * n_points
    active = torch.arange(n_rows * n_points, device=xs.device)
    best = [s.reshape(-1) for s in smallest]
    offset = window
    while True:
        centre_x = flat_x[active]
        ahead, behind = position + offset + 1, position - offset - 1
        gap_ahead = torch.where(ahead < n_points, flat_x[base + ahead.clamp(max=n_points - 1)] - centre_x, inf)
        gap_behind = torch.where(behind >= 0, centre_x - flat_x[base + behind.clamp(min=0)], inf)
        done = (gap_ahead >= best[-1]) & (gap_behind >= best[-1])
        result[active[done]] = best[-1][done]
        keep = ~done
        if not bool(keep.any()):
            return result.reshape(n_rows, n_points)
        active, position, base = active[keep], position[keep], base[keep]
        best = [b[keep] for b in best]
        centre_x, centre_y = flat_x[active], flat_y[active]
        for _ in range(check_every):
            offset += 1
            for neighbour in (position + offset, position - offset):
                inside = (neighbour >= 0) & (neighbour < n_points)
                index = base + neighbour.clamp(0, n_points - 1)
                distance = torch.maximum((flat_x[index] - centre_x).abs(), (flat_y[index] - centre_y).abs())
                _insert_smallest(best, torch.where(inside, distance, inf))


def mi_ksg_pairs(x: np.ndarray, y: np.ndarray, k: int = 3, device: str | torch.device = "cpu") -> np.ndarray:
    """KSG estimator 1 of MI (nats) for each row pair; x, y (R, N) -> (R,).

    x and y are scaled to unit variance; max-norm in the joint space; n_x, n_y count
    points strictly closer than the k-th neighbour distance:
    ``psi(k) + psi(N) - <psi(n_x + 1) + psi(n_y + 1)>`` (not clipped at 0).
    """
    device = torch.device(device) if isinstance(device, str) else device
    n_points = x.shape[1]
    if n_points <= k:
        raise UnitStatsInputError(f"KSG with k = {k} needs more than {k} samples; got {n_points}.")
    with np.errstate(invalid="ignore", divide="ignore"):
        xt = torch.from_numpy(x / x.std(axis=1, keepdims=True)).to(device, torch.float64)
        yt = torch.from_numpy(y / y.std(axis=1, keepdims=True)).to(device, torch.float64)
    degenerate = ~(torch.isfinite(xt).all(dim=1) & torch.isfinite(yt).all(dim=1))
    xt[degenerate] = 0.0
    yt[degenerate] = 0.0
    order = torch.argsort(xt, dim=1, stable=True)
    xs, ys = torch.gather(xt, 1, order), torch.gather(yt, 1, order)
    radius = _kth_neighbour_distance(xs, ys, k)
    n_x = _count_strictly_within(xs, radius) - 1
    y_sorted, y_order = torch.sort(ys, dim=1, stable=True)
    n_y = _count_strictly_within(y_sorted, torch.gather(radius, 1, y_order)) - 1
    psi_counts = torch.special.digamma(n_x.double() + 1).mean(1) + torch.special.digamma(n_y.double() + 1).mean(1)
    mi = digamma(k) + digamma(n_points) - psi_counts.cpu().numpy()
    mi[degenerate.cpu().numpy()] = np.nan
    return mi


def mi_ksg(acts: np.ndarray, k: int = 3, device: str | torch.device = "cpu") -> np.ndarray:
    """KSG MI (nats) between consecutive sublayers: (N, S, U) -> (S - 1, U)."""
    n_samples, n_sublayers, n_units = acts.shape
    rows = np.ascontiguousarray(acts.transpose(1, 2, 0))  # (S, U, N)
    mi = mi_ksg_pairs(rows[:-1].reshape(-1, n_samples), rows[1:].reshape(-1, n_samples), k, device)
    return mi.reshape(n_sublayers - 1, n_units)


# --------------------------------------------------------------------------- rotations


def phase_portrait(trajectory: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Phase portrait over sublayers (last axis): x = a - a_0, y = g - g_0, g = np.gradient(a)."""
    gradient = np.gradient(trajectory, axis=-1)
    return trajectory - trajectory[..., :1], gradient - gradient[..., :1]


def tangent_turns(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Signed turns of the tangent of the curve (x_l, y_l) along the last axis.

    Tangent angles theta_l = atan2(y_{l+1} - y_l, x_{l+1} - x_l); their changes are
    wrapped to [-pi, pi), summed and divided by 2 pi. Positive = counter-clockwise.
    """
    theta = np.arctan2(np.diff(y, axis=-1), np.diff(x, axis=-1))
    turn = np.diff(theta, axis=-1)
    wrapped = np.mod(turn + np.pi, 2.0 * np.pi) - np.pi
    return wrapped.sum(axis=-1) / (2.0 * np.pi)


def rotation_number(trajectory: np.ndarray) -> np.ndarray:
    """R of PAPER.md Fig. 2: tangent turns of each trajectory's phase portrait, (..., n) -> (...).

    The portrait of a over sublayers (last axis) is x = a - a_0, y = g - g_0 with
    g = np.gradient(a); an oscillation of a runs clockwise in it, so R < 0.
    """
    return tangent_turns(*phase_portrait(np.asarray(trajectory, dtype=np.float64)))


def layer_permutations(n_sublayers: int, n_shuffles: int, seed: int) -> np.ndarray:
    """``n_shuffles`` seeded permutations of the sublayer order, (n_shuffles, n)."""
    rng = np.random.default_rng([seed, 0])
    return np.argsort(rng.random((n_shuffles, n_sublayers)), axis=1)


def surrogate_trajectories(trajectory: np.ndarray, kind: str, n_surrogates: int, seed: int) -> np.ndarray:
    """Smooth surrogates of each trajectory (U, n) -> (U, n_surrogates, n).

    ``phase``: the straight line from a_0 to a_{n-1} is removed, the Fourier phases of
    the rest are randomised (amplitudes kept, the same random phases for every unit),
    and the line is added back: same trend, mean and power spectrum, no temporal order.
    ``circular``: the sequence is rotated by a random shift 1..n-1.
    """
    n_units, n_sublayers = trajectory.shape
    rng = np.random.default_rng([seed, 1])
    if kind == "circular":
        shifts = rng.integers(1, n_sublayers, size=n_surrogates)
        index = (np.arange(n_sublayers)[None, :] + shifts[:, None]) % n_sublayers
        return trajectory[:, index]
    if kind != "phase":
        raise UnitStatsInputError(f"unit_stats.surrogate = {kind!r}; allowed values are 'phase', 'circular'.")
    ramp = np.linspace(0.0, 1.0, n_sublayers)
    line = trajectory[:, :1] + (trajectory[:, -1:] - trajectory[:, :1]) * ramp
    spectrum = np.fft.rfft(trajectory - line, axis=-1)
    phases = rng.uniform(0.0, 2.0 * np.pi, size=(n_surrogates, spectrum.shape[-1]))
    phases[:, 0] = 0.0
    if n_sublayers % 2 == 0:
        phases[:, -1] = 0.0
    randomised = np.fft.irfft(spectrum[:, None, :] * np.exp(1j * phases)[None], n=n_sublayers, axis=-1)
    return randomised + line[:, None, :]


def null_summary(observed: np.ndarray, null: np.ndarray) -> dict[str, np.ndarray]:
    """Mean, std, 2.5/97.5 % quantiles of a null (n_null, U) and each unit's percentile.

    Percentile = 100 x (#null < R + 0.5 #null == R) / n_null.
    """
    below = (null < observed).sum(axis=0)
    equal = (null == observed).sum(axis=0)
    return {
        "mean": null.mean(axis=0),
        "std": null.std(axis=0, ddof=1) if null.shape[0] > 1 else np.zeros(null.shape[1]),
        "q025": np.quantile(null, 0.025, axis=0),
        "q975": np.quantile(null, 0.975, axis=0),
        "percentile": 100.0 * (below + 0.5 * equal) / null.shape[0],
    }


def rotations(
    acts: np.ndarray,
    n_shuffles: int = 1000,
    surrogate: str = "phase",
    seed: int = 0,
    per_sample: bool = False,
) -> dict[str, np.ndarray]:
    """Rotation numbers of each unit's sample-mean trajectory and their two nulls.

    (N, S, U) -> ``rotations`` (U,), ``rotations_null*`` (layer-shuffle null:
    mean, std, q025, q975, percentile (U,), samples (n_shuffles, U) float32),
    ``rotations_surrogate*`` (the same for the surrogate null) and, with
    ``per_sample``, ``rotations_per_sample_mean`` (U,).
    """
    mean_trajectory = acts.mean(axis=0).T  # (U, S)
    observed = rotation_number(mean_trajectory)
    permutations = layer_permutations(mean_trajectory.shape[1], n_shuffles, seed)
    shuffled_null = rotation_number(mean_trajectory[:, permutations]).T  # (n_shuffles, U)
    surrogate_null = rotation_number(surrogate_trajectories(mean_trajectory, surrogate, n_shuffles, seed)).T
    out = {"rotations": observed}
    for prefix, null in (("rotations_null", shuffled_null), ("rotations_surrogate", surrogate_null)):
        for name, value in null_summary(observed, null).items():
            out[f"{prefix}_{name}"] = value
        out[f"{prefix}_samples"] = null.astype(np.float32)
    if per_sample:
        out["rotations_per_sample_mean"] = rotation_number(acts.transpose(0, 2, 1)).mean(axis=0)
    return out


# --------------------------------------------------------------------------- shard / gather


def unit_block_stats(acts: np.ndarray, settings: Mapping[str, Any], timings: dict[str, float] | None = None) -> dict[str, np.ndarray]:
    """Every per-unit quantity for one block of units of one condition, (N, S, U) float64."""
    settings = {**DEFAULT_SETTINGS, **settings}
    device = resolve_device(settings["device"])
    timings = {} if timings is None else timings

    def timed(name, function, *args, **kwargs):
        start = time.perf_counter()
        value = function(*args, **kwargs)
        timings[name] = timings.get(name, 0.0) + time.perf_counter() - start
        return value

    r = timed("corr_consecutive", corr_consecutive, acts)
    out = {
        "mean_activation": acts.mean(axis=0),
        "std_activation": acts.std(axis=0, ddof=1),
        "corr_consecutive": r,
        "corr_pairs_hist": timed("corr_pairs_hist", corr_pairs_hist, acts, settings["corr_bins"]),
        "mi_kde": timed("mi_kde", mi_kde, acts, settings["mi_eps"], device, settings["kde_precision"]),
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
    with torch_threads(1):
        for condition, acts in data.items():
            blocks = []
            starts = range(0, n_units, UNIT_BLOCK)
            for first in tqdm(starts, desc=f"unit_stats {condition} units {unit_start}-{unit_stop - 1}", unit="block"):
                blocks.append(unit_block_stats(acts[:, :, first : first + UNIT_BLOCK], settings, timings))
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
    along their unit axis in unit order.
    """
    from rsdyn.store import read_group

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
    for condition in CONDITIONS:
        arrays[condition] = _concat_units([shard[3][condition] for shard in shards])
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
    from rsdyn.adapters import sublayer_names
    from rsdyn.store import write_group

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
