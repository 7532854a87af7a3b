"""The largest Lyapunov exponent of a recurrence along a trajectory, from its Jacobians.

Perturbations of a trajectory propagate as ``δ_l = J_l δ_{l-1}``; the largest Lyapunov
exponent ``λ_1 ≈ (1/L) log ||J_L ... J_1||`` is their mean exponential growth per step.
When it is positive (chaos: the logistic map at ``r = 4`` has ``λ_1 = log 2``) rounding
errors of size ``eps`` grow to ``O(1)`` within about ``log(1/eps) / λ_1`` steps: neither the
loop nor any parallel method determines the trajectory beyond that horizon, and the
parallel iteration needs of the order of ``L λ_1 / log(1/eps)`` sweeps (Gonzalez et al.
2025, "Predictability enables parallelization of nonlinear state space models").

The product is formed by a tree reduction in ``O(log L)`` depth: adjacent blocks are
multiplied pairwise, each product divided by its (Frobenius) norm and the logarithms of
the norms summed, so nothing overflows however large ``L λ_1`` is. Diagonal and scalar
blocks need no products: ``λ_1 = max_i mean_l log |J_{l,i}|``.
"""

from __future__ import annotations

import math
from typing import Any

from .factored import Factored
from .namespace import device_of

__all__ = ["horizon", "lyapunov_exponent"]


def lyapunov_exponent(J: Any, structure: str, xp: Any) -> Any:
    """Estimate the largest Lyapunov exponent per batch element.

    Parameters
    ----------
    J : array or Factored
        Jacobian blocks ``(..., L, w, w)`` (dense), ``(..., L, w)`` (diagonal) or
        ``(..., L)`` (scalar).
    structure : {"dense", "diagonal", "scalar"}
    xp : module

    Returns
    -------
    array, shape (...)
        ``(1/L) log ||J_L ... J_1||`` (``-inf`` where a block is zero).

    Examples
    --------
    >>> import numpy as np
    >>> from pcrsolve.lyapunov import lyapunov_exponent
    >>> J = np.full((100, 1, 1), 2.0)
    >>> float(lyapunov_exponent(J, "dense", np))
    0.6931471805599453
    """
    if isinstance(J, Factored):
        J = J.dense(xp)
    tiny = float(xp.finfo(J.dtype).smallest_normal)
    if structure == "scalar":
        return xp.mean(xp.log(xp.abs(J)), axis=-1)
    if structure == "diagonal":
        return xp.max(xp.mean(xp.log(xp.abs(J)), axis=-2), axis=-1)
    L, w = J.shape[-3], J.shape[-1]
    norm = xp.sqrt(xp.sum(J * J, axis=(-2, -1)))
    logs = xp.log(norm)
    M = J / xp.maximum(norm, xp.full_like(norm, tiny))[..., None, None]
    while M.shape[-3] > 1:
        n = M.shape[-3]
        if n % 2:
            eye = xp.eye(w, dtype=M.dtype, device=device_of(M))
            eye = xp.broadcast_to(eye, (*M.shape[:-3], 1, w, w))
            M = xp.concat([M, eye], axis=-3)
            logs = xp.concat([logs, xp.zeros_like(logs[..., :1])], axis=-1)
        P = xp.matmul(M[..., 1::2, :, :], M[..., 0::2, :, :])  # later step after earlier
        pn = xp.sqrt(xp.sum(P * P, axis=(-2, -1)))
        logs = logs[..., 0::2] + logs[..., 1::2] + xp.log(pn)
        M = P / xp.maximum(pn, xp.full_like(pn, tiny))[..., None, None]
    return logs[..., 0] / L


def horizon(exponent: float, dtype: Any, xp: Any) -> float:
    """Steps after which rounding errors reach ``O(1)``: ``log(1/eps) / λ_1`` (``inf`` if
    ``λ_1 <= 0``)."""
    if not exponent > 0.0:
        return math.inf
    return math.log(1.0 / float(xp.finfo(dtype).eps)) / exponent
