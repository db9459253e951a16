"""Mutual information of each unit between consecutive sublayers (Fig. 1G/H), in nats.

- ``mi_kde``: the paper's Gaussian-KDE mutual information, defined as the
  resubstitution estimate of ``scipy.stats.gaussian_kde`` (Scott bandwidth, full
  covariance for the joint): mean over samples of
  ``log((p(x, y) + eps) / (p(x) p(y) + eps))``. On CPU the kernel sums run in float32
  in fused numba kernels (each sample pair once) when numba is installed, else in
  blocked torch ops; float64 and CUDA use torch.
- ``mi_kde_literal``: the paper's written formula taken literally,
  ``sum_i p(x_i, y_i) log(p(x_i, y_i) / (p(x_i) p(y_i)))`` over the N sample points with
  the same KDE densities and eps (a reference: not normalised, so it carries density
  units and falls as the activations' spread grows).
- ``mi_ksg``: Kraskov-Stoegbauer-Grassberger estimator 1 (max-norm, k neighbours) on
  x and y scaled to unit variance, not clipped at 0.
- ``mi_gaussian``: ``-0.5 ln(1 - r^2)``, the MI of a bivariate Gaussian with that r.

Activations are ``(n_samples, n_sublayers, n_units)`` (float64); transitions are
consecutive sublayers ``l -> l + 1``.
"""

from __future__ import annotations

import math
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import torch
from scipy.special import digamma

from rsdyn.core.errors import UnitStatsInputError

try:  # optional: fused CPU kernels for the KDE sums (blocked torch ops without it)
    import numba
    from llvmlite import ir as llvm_ir
    from numba.extending import intrinsic as numba_intrinsic
except ImportError:  # pragma: no cover - depends on the environment
    numba = None


def kde_dtype(precision: str, device: torch.device) -> torch.dtype:
    """Dtype of the kernel sums: ``auto`` = float64 on CUDA, float32 on CPU."""
    if precision == "auto":
        return torch.float64 if device.type == "cuda" else torch.float32
    return {"float32": torch.float32, "float64": torch.float64}[precision]


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


def _literal_sum_from_densities(p_xy: np.ndarray, p_x: np.ndarray, p_y: np.ndarray, eps: float) -> np.ndarray:
    return np.sum(p_xy * np.log((p_xy + eps) / (p_x * p_y + eps)), axis=-1)


def mi_kde_pairs(
    x: np.ndarray,
    y: np.ndarray,
    eps: float = 1e-10,
    device: str | torch.device = "cpu",
    precision: str = "auto",
) -> np.ndarray:
    """Gaussian-KDE MI (nats) of each row pair (x_r, y_r); x, y (R, N) -> (R,)."""
    return _mi_from_densities(*_pair_densities(x, y, device, precision), eps)


def _pair_densities(x: np.ndarray, y: np.ndarray, device: str | torch.device, precision: str) -> tuple[np.ndarray, ...]:
    """KDE densities at the sample points of each row pair: joint, marginal of x, marginal of y, each (R, N)."""
    return kde_joint_density(x, y, device, precision), kde_marginal_density(x, device, precision), kde_marginal_density(y, device, precision)


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
    joint, marginal = _consecutive_densities(acts, eps, device, precision)
    return _mi_from_densities(joint, marginal[:-1], marginal[1:], eps)


def _consecutive_densities(
    acts: np.ndarray, eps: float, device: str | torch.device, precision: str
) -> tuple[np.ndarray, np.ndarray]:
    """KDE densities at the samples: joint of (l, l + 1) ``(S - 1, U, N)`` and marginal ``(S, U, N)``."""
    n_samples, n_sublayers, n_units = acts.shape
    rows = np.ascontiguousarray(acts.transpose(1, 2, 0))  # (S, U, N)
    marginal = kde_marginal_density(rows.reshape(-1, n_samples), device, precision)
    marginal = marginal.reshape(n_sublayers, n_units, n_samples)
    joint = kde_joint_density(
        rows[:-1].reshape(-1, n_samples), rows[1:].reshape(-1, n_samples), device, precision
    ).reshape(n_sublayers - 1, n_units, n_samples)
    return joint, marginal


def mi_kde_literal_pairs(
    x: np.ndarray,
    y: np.ndarray,
    eps: float = 1e-10,
    device: str | torch.device = "cpu",
    precision: str = "auto",
) -> np.ndarray:
    """The paper's written sum for each row pair; x, y (R, N) -> (R,).

    ``sum_i p(x_i, y_i) log((p(x_i, y_i) + eps) / (p(x_i) p(y_i) + eps))`` over the N
    sample points, with the same Gaussian KDE densities as :func:`mi_kde_pairs`. It is
    not normalised (no 1/N, no area element): the densities carry units
    1 / (units of x * units of y), so the value scales with N and with 1 / (sd_x sd_y).
    """
    return _literal_sum_from_densities(*_pair_densities(x, y, device, precision), eps)


def mi_kde_estimates(
    acts: np.ndarray,
    eps: float = 1e-10,
    device: str | torch.device = "cpu",
    precision: str = "auto",
) -> dict[str, np.ndarray]:
    """``mi_kde`` (resubstitution mean, nats) and ``mi_kde_literal`` (the paper's written
    sum, see :func:`mi_kde_literal_pairs`) between consecutive sublayers from one set of
    KDE densities: (N, S, U) -> two (S - 1, U) arrays."""
    joint, marginal = _consecutive_densities(acts, eps, device, precision)
    return {
        "mi_kde": _mi_from_densities(joint, marginal[:-1], marginal[1:], eps),
        "mi_kde_literal": _literal_sum_from_densities(joint, marginal[:-1], marginal[1:], eps),
    }


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
