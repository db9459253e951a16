"""Tensor-maximum-entropy (TME) surrogates (Elsayed & Cunningham 2017, Nat Neurosci).

For a data tensor T of shape (n_0, n_1, n_2) (here samples x sublayers x units or PCs):

- the mean tensor M is the sum of the three marginal means, found as in the authors'
  code: subtract the mean over modes (1, 2), then over (0, 2), then over (0, 1) of what
  remains; M = T - remainder;
- the marginal covariances of the residual R = T - M are the second moments
  Sigma_m = R_(m) R_(m)^T (R_(m) = the mode-m unfolding, n_m x rest), the convention of
  the authors' code (sums, not means);
- the TME distribution is the maximum-entropy distribution whose expected marginal
  covariances are those three: a Gaussian around M whose precision is the Kronecker
  sum L_0 (+) L_1 (+) L_2, with L_m = U_m diag(lambda_m) U_m^T sharing the eigenvectors
  U_m of Sigma_m. The multipliers solve, for every mode m and eigen-direction i,
  sum_{other indices} 1 / (lambda_0,i + lambda_1,j + lambda_2,k) = s_m,i (the
  eigenvalues s_m of Sigma_m).

rsdyn finds the multipliers by Newton's method with Armijo backtracking on the convex dual
F = -1/2 sum log(lambda_0,i + lambda_1,j + lambda_2,k) + 1/2 sum_m lambda_m . s_m
(the maximum-entropy problem's Lagrangian dual; its gradient is the constraint error),
with fused kernels over the n_0 n_1 n_2 sums. Eigen-directions with eigenvalue below
``floor`` x the mode's largest get no variance (an infinite multiplier), as in the
authors' code. Samples: M + (U_0 (x) U_1 (x) U_2)(z / sqrt(lambda-sum)), z ~ N(0, I).
The PyPI package ``tensor-maximum-entropy`` (0.0.2) ports the authors' MATLAB code,
but draws from NumPy's global, unseeded generator and plots, so rsdyn has its own.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass, field

import numba
import numpy as np

from rsdyn.core.errors import PopulationInputError


def single_threaded_blas():
    """Run BLAS on one thread inside the block when threadpoolctl is installed: small
    solves (Newton steps, k x k fits of the surrogate loops) are slower with several
    threads, and much slower on a busy machine."""
    try:
        from threadpoolctl import threadpool_limits
    except ImportError:  # pragma: no cover - optional
        return contextlib.nullcontext()
    return threadpool_limits(1, user_api="blas")


@dataclass
class TMEModel:
    """A fitted TME distribution: mean tensor, eigenbases and multipliers per mode."""

    shape: tuple[int, int, int]
    marginal_means: tuple[np.ndarray, np.ndarray, np.ndarray]  # broadcastable parts of M
    eigenvectors: tuple[np.ndarray, np.ndarray, np.ndarray]  # U_m (n_m, r_m), kept directions
    eigenvalues: tuple[np.ndarray, np.ndarray, np.ndarray]  # s_m (r_m,)
    multipliers: tuple[np.ndarray, np.ndarray, np.ndarray]  # lambda_m (r_m,)
    iterations: int = 0
    constraint_error: float = np.nan  # max_m ||fitted s_m - s_m|| / ||s_m||
    history: list[float] = field(default_factory=list)

    @property
    def mean(self) -> np.ndarray:
        a, b, c = self.marginal_means
        return a[:, None, None] + b[None, :, None] + c[None, None, :]


def marginal_means(tensor: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The three marginal-mean vectors whose broadcast sum is the TME mean tensor.

    The authors subtract the mean over modes (1, 2), then over (0, 2) of what remains,
    then over (0, 1); the means of the remainders follow from the tensor's own means
    without forming them: b = mean_(0,2)(T) - mean(a), c = mean_(0,1)(T) - mean(a) - mean(b).
    """
    tensor = np.asarray(tensor, dtype=np.float64)
    a = tensor.mean(axis=(1, 2))
    b = tensor.mean(axis=(0, 2)) - a.mean()
    c = tensor.mean(axis=(0, 1)) - a.mean() - b.mean()
    return a, b, c


def marginal_covariances(residual: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Sigma_m = R_(m) R_(m)^T of a residual tensor (n_0, n_1, n_2), one per mode
    (R_(m): the mode-m unfolding, n_m x the product of the other two sizes)."""
    residual = np.ascontiguousarray(residual, dtype=np.float64)
    n0, n1, n2 = residual.shape
    flat0 = residual.reshape(n0, n1 * n2)
    flat2 = residual.reshape(n0 * n1, n2)
    sigma1 = np.zeros((n1, n1))
    for block in residual:  # sum over mode 0 of (n1 x n2) @ (n2 x n1)
        sigma1 += block @ block.T
    return flat0 @ flat0.T, sigma1, flat2.T @ flat2


# --------------------------------------------------------------------------- kernels


@numba.njit(cache=True, nogil=True)
def _dual_pass(l0, l1, l2, with_hessian):
    """Sums over the Kronecker sum x_ijk = l0_i + l1_j + l2_k: the three marginal sums of
    1/x and, with_hessian, the pairwise sums of 1/x^2; NaN sums if some x <= 0."""
    n0, n1, n2 = l0.shape[0], l1.shape[0], l2.shape[0]
    g0, g1, g2 = np.zeros(n0), np.zeros(n1), np.zeros(n2)
    h01 = np.zeros((n0, n1)) if with_hessian else np.zeros((1, 1))
    h02 = np.zeros((n0, n2)) if with_hessian else np.zeros((1, 1))
    h12 = np.zeros((n1, n2)) if with_hessian else np.zeros((1, 1))
    for i in range(n0):
        for j in range(n1):
            base = l0[i] + l1[j]
            row = 0.0
            row_h = 0.0
            for k in range(n2):
                x = base + l2[k]
                if x <= 0.0:
                    g0[:] = np.nan
                    return g0, g1, g2, h01, h02, h12
                r = 1.0 / x
                row += r
                g2[k] += r
                if with_hessian:
                    r2 = r * r
                    row_h += r2
                    h02[i, k] += r2
                    h12[j, k] += r2
            g0[i] += row
            g1[j] += row
            if with_hessian:
                h01[i, j] += row_h
    return g0, g1, g2, h01, h02, h12


@numba.njit(cache=True, nogil=True)
def _log_sum(l0, l1, l2):
    """sum_ijk log(l0_i + l1_j + l2_k), or inf when some sum is <= 0 (outside the domain)."""
    total = 0.0
    for i in range(l0.shape[0]):
        for j in range(l1.shape[0]):
            base = l0[i] + l1[j]
            for k in range(l2.shape[0]):
                x = base + l2[k]
                if x <= 0.0:
                    return np.inf
                total += np.log(x)
    return total


@numba.njit(cache=True, nogil=True)
def _weighted_mode0_variance(l0, l1, l2, weight):
    """V_jk = sum_i weight_i / (l0_i + l1_j + l2_k)."""
    n0, n1, n2 = l0.shape[0], l1.shape[0], l2.shape[0]
    out = np.zeros((n1, n2))
    for i in range(n0):
        for j in range(n1):
            base = l0[i] + l1[j]
            for k in range(n2):
                out[j, k] += weight[i] / (base + l2[k])
    return out


# --------------------------------------------------------------------------- fit


def _dual(lams, s):
    """Gradient and Hessian of 2 F (see the module docstring) in the stacked multipliers,
    and the fitted marginal eigenvalues (sums of 1/x)."""
    g0, g1, g2, h01, h02, h12 = _dual_pass(*lams, True)
    if not np.isfinite(g0).all():
        raise PopulationInputError("TME fit left the domain (a multiplier sum <= 0); this is a bug, please report it.")
    gradient = np.concatenate([s[0] - g0, s[1] - g1, s[2] - g2])
    sizes = [len(l) for l in lams]
    hessian = np.zeros((sum(sizes), sum(sizes)))
    o1, o2 = sizes[0], sizes[0] + sizes[1]
    hessian[:o1, :o1] = np.diag(h01.sum(axis=1))
    hessian[o1:o2, o1:o2] = np.diag(h01.sum(axis=0))
    hessian[o2:, o2:] = np.diag(h02.sum(axis=0))
    hessian[:o1, o1:o2], hessian[:o1, o2:], hessian[o1:o2, o2:] = h01, h02, h12
    hessian[o1:o2, :o1], hessian[o2:, :o1], hessian[o2:, o1:o2] = h01.T, h02.T, h12.T
    return gradient, hessian, (g0, g1, g2)


def _scaled_solve(hessian, gradient):
    """Solve H x = g after symmetric diagonal (Jacobi) scaling: the multipliers of
    directions with tiny and large eigenvalues differ by many orders of magnitude."""
    scale = 1.0 / np.sqrt(np.diag(hessian))
    return scale * np.linalg.solve(hessian * scale[:, None] * scale[None, :], gradient * scale)


def _split(vector, sizes):
    o1, o2 = sizes[0], sizes[0] + sizes[1]
    return vector[:o1], vector[o1:o2], vector[o2:]


#: sample-mean draws generated together by ``sample_tme_mode0_mean``
_MEAN_CHUNK = 100

#: below this constraint error, three Newton steps without halving it end the fit
STALL_ERROR = 1e-6


def fit_tme(tensor: np.ndarray, floor: float = 1e-10, tol: float = 1e-9, max_iter: int = 200) -> TMEModel:
    """The TME distribution of a tensor (n_0, n_1, n_2) (see the module docstring).

    The two gauge directions (adding t to one mode's multipliers and subtracting it
    from another's changes nothing) are fixed by holding one multiplier of modes 1 and
    2. Stops when every mode's eigenvalues are matched to ``tol`` (relative 2-norm),
    when below ``STALL_ERROR`` three steps do not halve the error (float64 round-off),
    or after ``max_iter`` steps.
    """
    tensor = np.asarray(tensor, dtype=np.float64)
    if tensor.ndim != 3 or min(tensor.shape) < 2:
        raise PopulationInputError(f"TME needs a 3-way tensor with at least 2 entries per mode; got shape {tensor.shape}.")
    means = marginal_means(tensor)
    residual = tensor - (means[0][:, None, None] + means[1][None, :, None] + means[2][None, None, :])
    vectors, values = [], []
    for sigma in marginal_covariances(residual):
        eigenvalues, eigenvectors = np.linalg.eigh(sigma)
        keep = eigenvalues > floor * max(eigenvalues[-1], 0.0)
        if not keep.any():
            raise PopulationInputError("TME: a marginal covariance is zero; the states do not vary.")
        order = np.argsort(eigenvalues[keep])[::-1]
        values.append(eigenvalues[keep][order])
        vectors.append(eigenvectors[:, keep][:, order])
    sizes = [len(v) for v in values]
    total = np.prod(sizes)
    # the isotropic solution scaled per direction: exact when every eigenvalue of a mode is equal
    lams = [total / size / (3.0 * v) for size, v in zip(sizes, values)]
    # the gauge (adding t to mode 0 and subtracting it from mode 1 or 2) is fixed by
    # holding the first multiplier of modes 1 and 2 where they start
    free = np.ones(sum(sizes), dtype=bool)
    free[[sizes[0], sizes[0] + sizes[1]]] = False
    with single_threaded_blas():
        lams, iteration, error, history = _newton(lams, values, sizes, free, tol, max_iter)
    return TMEModel(
        shape=tensor.shape,
        marginal_means=means,
        eigenvectors=tuple(vectors),
        eigenvalues=tuple(values),
        multipliers=tuple(lams),
        iterations=iteration,
        constraint_error=float(error),
        history=history,
    )


def _newton(lams, values, sizes, free, tol, max_iter):
    """Damped Newton on the dual from ``lams``: (multipliers, steps, constraint error, history)."""
    history = []
    error = np.inf
    iteration = 0
    target = np.concatenate(values)
    t = 0.5
    value = None  # 2F at the current multipliers
    for iteration in range(1, max_iter + 1):
        gradient, hessian, fitted = _dual(lams, values)
        error = max(np.linalg.norm(f - v) / np.linalg.norm(v) for f, v in zip(fitted, values))
        history.append(error)
        stalled = len(history) > 3 and error < STALL_ERROR and error > 0.5 * min(history[-4:-1])
        if error < tol or stalled:  # converged, or float64 round-off reached
            iteration -= 1
            break
        step = np.zeros_like(gradient)
        step[free] = -_scaled_solve(hessian[np.ix_(free, free)], gradient[free])
        decrement = float(-gradient @ step)  # squared Newton decrement
        # Armijo backtracking on 2F = -sum log x + lambda . s, from twice the last accepted
        # step (the accepted steps grow from tiny to 1 as the iterate nears the optimum)
        stacked = np.concatenate(lams)
        if value is None:
            value = -_log_sum(*lams) + float(stacked @ target)
        t = min(1.0, 2.0 * t)
        while True:
            candidate = stacked + t * step
            log_sum = _log_sum(*_split(candidate, sizes))
            trial = -log_sum + float(candidate @ target)
            if np.isfinite(log_sum) and trial <= value - 0.25 * t * decrement:
                value = trial
                break
            t *= 0.5
            if t < 1e-14:  # no descent left at float64 precision
                return lams, iteration, error, history
        lams = [np.ascontiguousarray(part) for part in _split(candidate, sizes)]
    return lams, iteration, error, history


def expected_marginal_covariances(model: TMEModel) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The marginal covariances the fitted distribution has in expectation, (n_m, n_m) each."""
    g0, g1, g2, *_ = _dual_pass(*model.multipliers, False)
    return tuple((U * g) @ U.T for U, g in zip(model.eigenvectors, (g0, g1, g2)))


# --------------------------------------------------------------------------- sampling


def sample_tme(model: TMEModel, n_surrogates: int, seed: int = 0, stream: int = 0) -> np.ndarray:
    """``n_surrogates`` seeded surrogate tensors, (n_surrogates, n_0, n_1, n_2) float64;
    ``stream`` separates the draws of several tensors fitted under one seed."""
    return np.concatenate(list(sample_tme_chunks(model, n_surrogates, seed, stream)), axis=0)


#: surrogates drawn and transformed together by :func:`sample_tme_chunks`
SURROGATE_CHUNK = 32


def sample_tme_chunks(model: TMEModel, n_surrogates: int, seed: int = 0, stream: int = 0, chunk: int = SURROGATE_CHUNK):
    """:func:`sample_tme`'s surrogates, ``chunk`` at a time (m, n_0, n_1, n_2): the same
    draws (the normal deviates are taken from the generator in the same order), without
    holding every surrogate at once."""
    mean, U0 = model.mean, model.eigenvectors[0]
    for factors in sample_tme_factors(model, n_surrogates, seed, stream, chunk):
        yield mean + np.einsum("ia,majk->mijk", U0, factors, optimize=True)


def sample_tme_factors(model: TMEModel, n_surrogates: int, seed: int = 0, stream: int = 0, chunk: int = SURROGATE_CHUNK,
                       mode1: np.ndarray | None = None):
    """The surrogates of :func:`sample_tme_chunks` before their mode-0 basis: W (m, r_0, n_1,
    n_2) with surrogate = mean + U_0 W (along mode 0). ``mode1`` (n_1', n_1), when given,
    is applied along mode 1 as well (e.g. a difference operator: the factors of the
    surrogates' derivative over mode 1); the draws are the same either way."""
    rng = np.random.default_rng([seed, 0, stream])
    l0, l1, l2 = model.multipliers
    scale = 1.0 / np.sqrt(l0[:, None, None] + l1[None, :, None] + l2[None, None, :])
    _, U1, U2 = model.eigenvectors
    bases = [U1] if mode1 is None else [U1, np.asarray(mode1, dtype=np.float64) @ U1]
    for start in range(0, n_surrogates, chunk):
        z = rng.standard_normal((min(chunk, n_surrogates - start), *scale.shape)) * scale
        right = z @ U2.T  # (m, r0, r1, n2)
        factors = [np.matmul(basis, right) for basis in bases]  # (m, r0, n1, n2)
        yield factors[0] if mode1 is None else tuple(factors)


def sample_tme_mode0_mean(model: TMEModel, n_surrogates: int, seed: int = 0) -> np.ndarray:
    """The mean over mode 0 (samples) of ``n_surrogates`` surrogates, (n_surrogates, n_1, n_2).

    Exact in distribution without drawing whole tensors: the mode-0 mean of a surrogate
    is mean(M) + U_1 (sqrt(V) * Z) U_2^T with V_jk = sum_i w_i^2 / (lambda_0,i +
    lambda_1,j + lambda_2,k), w = U_0^T 1 / n_0 and Z (r_1, r_2) standard normal.
    """
    rng = np.random.default_rng([seed, 1])
    U0, U1, U2 = model.eigenvectors
    weight = U0.mean(axis=0) ** 2
    variance = _weighted_mode0_variance(*model.multipliers, np.ascontiguousarray(weight))
    a, b, c = model.marginal_means
    mean = a.mean() + b[:, None] + c[None, :]
    scale = np.sqrt(variance)
    out = np.empty((n_surrogates, model.shape[1], model.shape[2]))
    for start in range(0, n_surrogates, _MEAN_CHUNK):  # one large product per chunk of draws
        stop = min(n_surrogates, start + _MEAN_CHUNK)
        z = rng.standard_normal((stop - start, *variance.shape)) * scale
        right = (z.reshape(-1, z.shape[2]) @ U2.T).reshape(stop - start, z.shape[1], -1)  # (n, r1, n2)
        out[start:stop] = mean + np.matmul(U1, right)
    return out
