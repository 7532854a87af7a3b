"""The stopping rule of the nonlinear iteration: when is a trajectory converged?

A batch element is **converged** after an iteration when

1. its states satisfy every step to the tolerance: ``max_{l,i} |f_l(X_{l-1}) - X_l| <= τ``;
2. the last update is within it too: ``max |X_new - X| <= τ``; and
3. the *error estimate* is: ``err ≈ upd · q / (1 - q) <= τ``, where ``q`` estimates the
   contraction rate of the iteration from the ratios of successive updates and successive
   residuals (the larger). For a linearly converging iteration (quasi, picard, jacobi,
   damped steps) with rate ``q``, ``|X - X*| ≈ upd q / (1 - q)``, which can exceed the
   update manyfold; for Newton ``q`` goes to 0 and the test costs nothing. ``q >= 1``
   (not yet contracting) is never converged.

Here ``τ = atol + rtol · S`` with ``S = max_{l,i} max(|X_l|, |f_l(X_{l-1})|)`` of the
current states: the scale of the *solution*, never of the initial guess or of ``x0``
(a far-off guess or a huge ``x0`` followed by bounded states must not loosen it). The
default ``atol`` is the dtype's smallest normal number (a trajectory that is exactly zero
is converged; any other is measured relative to its own size).

After ``L`` iterations every state has been set by the sequential update (see
:mod:`pcrsolve.direction`): the trajectory is the loop's, and it is converged whatever
the estimates say.
"""

from __future__ import annotations

import math
from typing import Any

__all__ = ["StoppingRule", "default_tolerance"]


def default_tolerance(dtype: Any, xp: Any) -> float:
    """The default relative tolerance ``rtol`` for states of ``dtype``.

    ``max(50 eps, 1e-2 sqrt(eps))``: 1.5e-10 in float64, 6e-6 in float32.

    Parameters
    ----------
    dtype
        A real floating dtype of ``xp``.
    xp : module

    Returns
    -------
    float

    Examples
    --------
    >>> import numpy as np
    >>> from pcrsolve import default_tolerance
    >>> default_tolerance(np.float64, np)
    1.4901161193847657e-10
    """
    eps = float(xp.finfo(dtype).eps)
    return max(50.0 * eps, 1e-2 * eps**0.5)


def _batch_max(x: Any, xp: Any) -> Any:
    """``max |x|`` over the step and feature axes: one value per batch element."""
    return xp.max(xp.abs(x), axis=(-2, -1))


class StoppingRule:
    """The per-batch-element convergence test (see the module docstring).

    Parameters
    ----------
    rtol : float
        Relative tolerance, finite and ``>= 0``.
    atol : float or None
        Absolute tolerance; ``None``: the dtype's smallest normal number.
    length : int
        ``L``: after ``L`` iterations every state is the loop's.
    dtype
        The working dtype.
    xp : module
    """

    def __init__(self, rtol: float, atol: float | None, length: int, dtype: Any,
                 xp: Any) -> None:
        self.rtol = rtol
        self.atol = float(xp.finfo(dtype).smallest_normal) if atol is None else atol
        self.length = length
        self.xp = xp
        # updates and residuals below this many ulps of the scale are rounding noise: their
        # ratios say nothing about the contraction rate
        self.noise = 16.0 * float(xp.finfo(dtype).eps)
        self._last_upd: Any = None
        self._last_res: Any = None

    def tolerance(self, X: Any, F: Any) -> Any:
        """``τ = atol + rtol · max(|X|, |f(X_prev)|)`` per batch element, shape (...)."""
        return self.atol + self.rtol * self.scale(X, F)

    def scale(self, X: Any, F: Any) -> Any:
        """``max(|X|, |f(X_prev)|)`` per batch element, shape (...); 0 where not finite
        (an overflowing iterate is within no tolerance)."""
        xp = self.xp
        s = xp.maximum(_batch_max(X, xp), _batch_max(F, xp))
        return xp.where(xp.isfinite(s), s, xp.zeros_like(s))

    def start(self, rnorm: Any) -> None:
        """Remember the initial residual norms, shape (...)."""
        self._last_res = rnorm
        self._last_upd = None

    def error_estimate(self, upd: Any, rnorm: Any, scale: Any) -> Any:
        """``upd · q / (1 - q)`` per batch element, ``inf`` where ``q >= 1``.

        Parameters
        ----------
        upd : array, shape (...)
            ``max |X_new - X|`` of this iteration.
        rnorm : array, shape (...)
            ``max |R|`` after it.
        scale : array, shape (...)
            ``max(|X|, |f(X_prev)|)``: updates and residuals below ``16 eps`` of it are
            rounding noise (the iteration is stationary; the estimate is then ``upd``).
        """
        xp = self.xp
        floor = self.noise * scale
        zero = xp.zeros_like(upd)
        q = xp.where(rnorm <= floor, zero, _ratio(rnorm, self._last_res, xp))
        if self._last_upd is not None:
            q = xp.maximum(q, _ratio(upd, self._last_upd, xp))
        one = xp.ones_like(q)
        safe = xp.where(q < 1.0, 1.0 - q, one)
        est = xp.where(q < 1.0, upd * q / safe, xp.full_like(q, math.inf))
        return xp.where(upd <= floor, upd, est)

    def converged(self, upd: Any, rnorm: Any, scale: Any, iterations: int) -> Any:
        """Which batch elements have converged after iteration ``iterations`` (bool, (...)).

        Parameters
        ----------
        upd : array, shape (...)
            ``max |X_new - X|``.
        rnorm : array, shape (...)
            ``max |R|`` at the new iterate.
        scale : array, shape (...)
            :meth:`scale` at the new iterate.
        iterations : int
            Iterations done, this one included.
        """
        if iterations >= self.length:
            return rnorm == rnorm  # every state is the loop's; finite residuals converge
        tau = self.atol + self.rtol * scale
        est = self.error_estimate(upd, rnorm, scale)
        return (rnorm <= tau) & (upd <= tau) & (est <= tau)

    def record(self, upd: Any, rnorm: Any) -> None:
        """Remember the accepted iteration's update and residual (for the next ``q``)."""
        self._last_upd, self._last_res = upd, rnorm


def _ratio(new: Any, old: Any, xp: Any) -> Any:
    """``new / old`` with ``0 / 0 = 0`` and ``x / 0 = inf``."""
    zero = old == 0.0
    safe = xp.where(zero, xp.ones_like(old), old)
    r = new / safe
    return xp.where(zero, xp.where(new == 0.0, xp.zeros_like(r), xp.full_like(r, math.inf)), r)
