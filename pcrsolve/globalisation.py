"""The globalisation of the nonlinear iteration: accept or reject a step, adapt the damping.

Newton's method on the whole trajectory converges quadratically from close enough; far from
the solution its linearisation can be useless (the logistic map from a guess where it
expands: the Newton step grows like ``J^l`` along the chain). A globalisation decides, per
batch element, what to do with the direction's proposal.

``"trust-region"`` (:class:`TrustRegion`, the default) measures steps by the merit
``φ(X) = ½ Σ_l |f_l(X_{l-1}) - X_l|²`` and the gain ratio

    ρ = (φ(X) - φ(X + Δ)) / (φ(X) - m(Δ)),

actual over predicted reduction, ``m`` the linear model's merit (Moré 1978; Nielsen 1999).
Each iteration first tries the **Newton step** (λ = 0: one bidiagonal solve, ``m = 0``), so
a problem Newton handles pays nothing beyond evaluating ``φ``; it is kept when ``φ`` falls
by a quarter, or stays within ``GROWTH = 3`` times the smallest ``φ`` of the iterates so far
(a bounded non-monotone rule, for iterations whose merit rises before it falls), or is
one of the solve's first ``FREE_STEPS = 2`` failing steps whose merit stays within
``FREE_GROWTH = 1e6`` times the smallest (a watchdog for a single overshoot). Batch
elements where it fails (``ρ <= η``) take **Levenberg–Marquardt steps**
``(G^T G + λ I) Δ = -G^T r`` (one block-tridiagonal solve each,
:func:`pcrsolve.direction.lm_step`) with their own ``λ``:

* accepted (``ρ > η``): ``λ ← λ · max(1/3, 1 - (2ρ - 1)^3)``, ``ν ← 2`` (Nielsen);
* rejected: ``λ ← λ ν``, ``ν ← 2 ν``, and try again (at most a few times per iteration).

An element whose every trial is rejected still moves its pinned states (the converged
prefix and the next state) to ``f(X_prev)``: the finite-termination step is never
withheld. An accepted Newton step shrinks ``λ`` by 3 for later use.

``"none"`` (:class:`NoGlobalisation`) accepts every proposal: the plain Newton (or quasi,
picard) iteration, for problems known to be benign, or to study the raw iteration.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

from .direction import lm_step, periodic_tail, pinned_prefix
from .namespace import device_of

__all__ = ["GLOBALISATIONS", "NoGlobalisation", "TrustRegion", "make_globalisation"]

GLOBALISATIONS = ("trust-region", "none")

#: the gain ratio a step needs to be accepted
ETA = 1e-4
#: the gain ratio that accepts the Newton step without trying anything else; below it
#: (a poor step, e.g. a useful head and a garbage tail) the alternatives are tried and the
#: Newton step is kept only if it is the best of them
ETA_NEWTON = 0.25
#: λ of an element's first Levenberg–Marquardt step, and its floor: Newton is always tried
#: first, so a smaller λ would only repeat the Newton step that just failed
LAMBDA_START = 1.0
LAMBDA_MIN = 1e-2
#: Levenberg–Marquardt trials per iteration, for the elements whose Newton step failed
MAX_TRIALS = 4
#: a Newton step is also accepted while its merit stays within this factor of the smallest
#: merit of the iterates so far (a bounded non-monotone rule: Picard and Newton iterations
#: whose merit rises for a few steps before it falls keep their pace)
GROWTH = 3.0
#: a watchdog (Chamberlain, Powell, Lemarechal and Pedersen 1982, in spirit): the first
#: FREE_STEPS Newton steps of a solve that fail the tests above are still taken while their
#: merit stays finite and within FREE_GROWTH times the smallest merit so far. Undamped
#: Newton often overshoots once and then converges quadratically (a residual network in
#: training: residuals 0.34, 2.2, 0.25, 6e-4, 2e-6); rejecting that first step cost 36
#: Levenberg–Marquardt iterations there. The budget is per solve, so the trust region is
#: back in charge after it, and every guarantee (pinned prefix, finite termination) stands.
FREE_STEPS = 2
FREE_GROWTH = 1e6


def merit(R: Any, xp: Any) -> Any:
    """``φ = ½ Σ_{l,i} R_{l,i}^2`` per batch element, shape (...)."""
    return 0.5 * xp.sum(R * R, axis=(-2, -1))


class NoGlobalisation:
    """Accept every proposal (the undamped iteration)."""

    name = "none"

    def rejected(self, phi: Any, phi_trial: Any, within: Any, active: Any) -> Any | None:
        """Which elements reject the Newton proposal: none (``None``: no test at all)."""
        return None


class TrustRegion:
    """Newton first, Levenberg–Marquardt with a per-element λ where it fails.

    Parameters
    ----------
    batch : tuple of int
        The batch shape.
    dtype
        The working dtype.
    like : array
        An array on the device to allocate on.
    xp : module
    """

    name = "trust-region"

    def __init__(self, batch: tuple[int, ...], dtype: Any, like: Any, xp: Any) -> None:
        self.xp = xp
        dev = device_of(like)
        self.lam = xp.full(batch, LAMBDA_START, dtype=dtype, device=dev)
        self.nu = xp.full(batch, 2.0, dtype=dtype, device=dev)
        self.lm_steps = 0  # Levenberg–Marquardt trials taken (for the record)
        self.best: Any = None  # the smallest merit of the iterates so far, per element
        self.free = xp.full(batch, float(FREE_STEPS), dtype=dtype, device=dev)  # watchdog

    def rejected(self, phi: Any, phi_trial: Any, within: Any, active: Any) -> Any:
        """Which active elements reject the Newton proposal (bool, shape (...)).

        The Newton step predicts ``m = 0``, so ``ρ = 1 - φ_trial / φ``: accepted when the
        merit falls by the fraction ``η``, when it stays within ``GROWTH`` times the
        smallest merit of the iterates so far (non-monotone, but bounded: the merit never
        escalates), or when the trial's residual is ``within`` the tolerance already (at
        the rounding floor the merit need not fall). NaN/Inf in the trial rejects it.
        Elements that accept have their ``λ`` shrunk by 3 (floored).
        """
        xp = self.xp
        self.best = phi if self.best is None else xp.minimum(self.best, phi)
        ok = ((phi_trial <= (1.0 - ETA_NEWTON) * phi) | (phi_trial <= GROWTH * self.best)
              | (phi == 0.0) | within)
        # the watchdog: a bounded number of free steps per solve (see FREE_STEPS)
        free = (active & ~ok & (self.free > 0.0) & xp.isfinite(phi_trial)
                & (phi_trial <= FREE_GROWTH * self.best))
        self.free = xp.where(free, self.free - 1.0, self.free)
        ok = ok | free
        self.lam = xp.where(ok, xp.maximum(self.lam / 3.0, xp.full_like(self.lam, LAMBDA_MIN)),
                            self.lam)
        return active & ~ok

    def search(
        self,
        J: Any,
        structure: str,
        current: Any,
        pinned: Any,
        rejected: Any,
        evaluate: Callable[[Any], Any],
        select: Callable[[Any, Any, Any], Any],
        trial: Any,
        any_true: Callable[[Any], bool],
        tolerance: Callable[[Any, Any], Any] | None = None,
    ) -> Any:
        """Levenberg–Marquardt trials for the ``rejected`` elements.

        Parameters
        ----------
        J : array or Factored
            The Jacobian blocks at the current iterate.
        structure : {"dense", "diagonal", "scalar"}
        current : Iterate
            The current iterate (``X``, ``F``, ``R``).
        pinned : array of bool, shape (..., L)
        rejected : array of bool, shape (...)
            The elements whose Newton step failed.
        evaluate : callable
            ``evaluate(X) -> Iterate``: the step function at a trial trajectory.
        select : callable
            ``select(mask, a, b) -> Iterate``: per element, ``a`` where ``mask``.
        trial : Iterate
            The Newton trial (kept where it was accepted).
        any_true : callable
            ``any_true(mask) -> bool`` (one host read).
        tolerance : callable, optional
            ``tolerance(X, F) -> τ`` per element; given, the Newton trial's converged head
            is kept and the tail restarted from its end before any LM step.

        Returns
        -------
        Iterate
            The trial each element takes.
        """
        xp = self.xp
        pin = pinned[..., None]
        # 1. keep the Newton trial's converged head and restart the tail from its end: the
        #    state after the head takes f of the head's last state, and the states after it
        #    repeat the head's last period (a fixed point: that state repeated; a k-cycle:
        #    the cycle in its phase); see periodic_tail
        if tolerance is not None:
            head = pinned_prefix(trial.state_res, tolerance(current.X, current.F), xp)[0]
            t = evaluate(periodic_tail(trial.X, trial.F, trial.Xprev[..., 0, :], head, xp))
            phi, phi_newton, phi_t = merit(current.R, xp), merit(trial.R, xp), merit(t.R, xp)
            ok = rejected & (phi_t <= (1.0 - ETA) * phi) & ~(phi_t > phi_newton)
            newton_ok = rejected & ~ok & (phi_newton <= (1.0 - ETA) * phi)
            trial = select(ok, t, trial)
            rejected = rejected & ~ok & ~newton_ok
            if not any_true(rejected):
                return trial
        # 2. the forced move: the pinned states take f(X_prev); the LM steps start there
        base = evaluate(xp.where(pin, current.F, current.X))
        for _ in range(MAX_TRIALS):
            self.lm_steps += 1
            delta, model, phi0 = lm_step(J, base.R, pinned, self.lam, structure, xp)
            t = evaluate(base.X + delta)
            # the pinned rows' residuals are the same in base and t: compare the free rows
            pred = phi0 - model
            actual = merit(base.R, xp) - merit(t.R, xp)
            good = (pred > 0.0) & xp.isfinite(actual)
            rho = xp.where(good, actual / xp.where(good, pred, xp.ones_like(pred)),
                           xp.full_like(pred, -math.inf))
            ok = rejected & (rho > ETA)
            grow = xp.maximum(xp.full_like(rho, 1.0 / 3.0),
                              1.0 - (2.0 * xp.where(ok, rho, xp.zeros_like(rho)) - 1.0) ** 3)
            fail = rejected & ~ok
            self.lam = xp.where(ok, xp.maximum(self.lam * grow,
                                               xp.full_like(self.lam, LAMBDA_MIN)),
                                xp.where(fail, self.lam * self.nu, self.lam))
            self.nu = xp.where(ok, xp.full_like(self.nu, 2.0),
                               xp.where(fail, 2.0 * self.nu, self.nu))
            trial = select(ok, t, trial)
            rejected = fail
            if not any_true(rejected):
                return trial
        # every trial failed: keep the forced move of the pinned states alone
        return select(rejected, base, trial)


def make_globalisation(name: str, uses_jacobian: bool, batch: tuple[int, ...], dtype: Any,
                       like: Any, xp: Any) -> NoGlobalisation | TrustRegion:
    """The globalisation ``name`` (``"none"`` whenever the mode has no Jacobian)."""
    if name == "none" or not uses_jacobian:
        return NoGlobalisation()
    return TrustRegion(batch, dtype, like, xp)
