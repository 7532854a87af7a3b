"""Diffusion samplers (DDPM, DDIM) as Markov recurrences, for any denoiser ``eps(x, t)``.

A sampler of ``S`` denoising steps is the recurrence

    x_{t_prev} = a_l x_t + b_l eps(x_t, t) + c_l z_l,   l = 0 .. S-1,

in the image vector ``x`` (flattened, shape ``(..., D)``), where step ``l`` goes from the
timestep ``t = tau_{S-l}`` to ``t_prev = tau_{S-l-1}`` of an increasing sub-sequence
``0 = tau_0 < tau_1 < ... < tau_S <= T`` (the full DDPM chain has ``tau_i = i`` and
``S = T``: step ``l`` goes from ``t = T - l`` to ``t = T - l - 1``). The scalars
``a_l, b_l, c_l`` come from the noise schedule (:class:`SamplerPlan`); the noise ``z_l`` is
sampled *in advance* and passed in, so that the whole chain is a deterministic function of
``(x_T, z)`` and can be solved for all steps at once by :func:`pcrsolve.solve`. The
recurrence's ``x0`` is the starting noise ``x_T``; its state ``l + 1`` (``states[..., l, :]``)
is the image at timestep ``t_prev = tau_{S-l-1}``, and ``states[..., -1, :]`` is the sample
``x_0``.

The Jacobian of step ``l`` is ``a_l I + b_l d eps/dx``. Four ways to use it
(``jacobian=`` of :func:`sample`):

* ``"full"``: Newton with the dense Jacobian of the denoiser, from ``D`` JVPs per
  iteration (torch autodiff, a user's ``denoiser_jvp``, or NumPy finite differences);
* ``"diagonal"``: quasi-Newton with its diagonal (the same ``D`` JVPs, an elementwise solve);
* ``"gaussian"``: ``J_l = (a_l + b_l k_t) I`` with ``k_t = sqrt(1 - abar_t) / (abar_t s^2 +
  1 - abar_t)``, the exact ``d eps/dx`` of the optimal denoiser when the data are
  ``N(0, s^2 I)`` (``s = data_std``): a free scalar, like the next option, that knows the
  denoiser contracts (``eps(x_t, t) ~ x_t`` at high noise);
* ``"scheduler"``: the denoiser's Jacobian taken as zero, ``J_l = a_l I``.

The last two need no differentiation of the denoiser at all: one denoiser evaluation of all
steps and one elementwise solve per iteration.

The step functions are written against the Array API: they run on NumPy, PyTorch, CuPy
and ``array_api_strict``; the denoiser is the user's function on arrays of the same library.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from ..errors import InputError, StepFunctionError
from ..namespace import device_of, infer_namespace
from ..newton import solve
from ..result import Solution

__all__ = [
    "JACOBIANS",
    "SAMPLERS",
    "NoiseSchedule",
    "SamplerPlan",
    "make_step",
    "plan_sampler",
    "sample",
    "sample_sequential",
]

#: Samplers understood by :func:`plan_sampler` and :func:`sample`.
SAMPLERS = ("ddpm", "ddim")
#: Jacobian options of :func:`sample`, mapped to the mode of :func:`pcrsolve.solve`.
JACOBIANS = {"full": "newton", "diagonal": "quasi", "gaussian": "quasi", "scheduler": "quasi"}
_RESERVED = ("mode", "jacobian", "jacobian_structure", "jvp")

#: ``denoiser(x, t)``: noisy images ``(..., n, D)`` and integer timesteps ``(n,)`` (values
#: in ``1..T``) -> the predicted noise ``(..., n, D)``.
Denoiser = Callable[[Any, Any], Any]


@dataclass(frozen=True)
class NoiseSchedule:
    """A variance schedule ``beta_1 .. beta_T`` and the quantities derived from it.

    Timesteps are 1-based, as in Ho et al. (2020): ``beta[t - 1]`` is ``beta_t``,
    ``t = 1..T``; ``alpha_t = 1 - beta_t`` and ``alpha_bar_t = prod_{s <= t} alpha_s``
    (with ``alpha_bar_0 = 1``). The values are Python floats (double precision), so a
    schedule belongs to no array library; samplers convert them to the states' dtype.

    Parameters
    ----------
    betas : sequence of float, length T
        ``beta_1 .. beta_T``, each in ``(0, 1)``.

    Examples
    --------
    >>> from pcrsolve.adapters.diffusion import NoiseSchedule
    >>> s = NoiseSchedule.linear(1000)
    >>> s.T, round(s.betas[0], 6), round(s.betas[-1], 6)
    (1000, 0.0001, 0.02)
    >>> round(s.alpha_bar(1000), 6)
    4e-05
    """

    betas: tuple[float, ...]

    def __post_init__(self) -> None:
        betas = tuple(float(b) for b in self.betas)
        if len(betas) == 0:
            raise InputError("`betas` must hold at least one value (T >= 1); got T = 0")
        bad = [i + 1 for i, b in enumerate(betas) if not (0.0 < b < 1.0)]
        if bad:
            raise InputError(
                f"`betas` must lie in (0, 1); beta_t is {betas[bad[0] - 1]!r} at t = {bad[0]}"
            )
        object.__setattr__(self, "betas", betas)
        bars, prod = [], 1.0
        for b in betas:
            prod *= 1.0 - b
            bars.append(prod)
        object.__setattr__(self, "_alpha_bars", tuple(bars))

    @classmethod
    def linear(cls, T: int = 1000, beta_start: float = 1e-4,
               beta_end: float = 0.02) -> NoiseSchedule:
        """The linear schedule of Ho et al. (2020): ``beta_t`` evenly spaced in
        ``[beta_start, beta_end]``.

        Parameters
        ----------
        T : int, default 1000
            Number of diffusion steps, ``>= 1``.
        beta_start, beta_end : float
            ``beta_1`` and ``beta_T``, in ``(0, 1)``.

        Returns
        -------
        NoiseSchedule
        """
        if isinstance(T, bool) or not isinstance(T, int) or T < 1:
            raise InputError(f"`T` must be an int >= 1 (the number of diffusion steps); "
                             f"got {T!r}")
        if T == 1:
            return cls((float(beta_start),))
        step = (beta_end - beta_start) / (T - 1)
        return cls(tuple(beta_start + i * step for i in range(T)))

    @property
    def T(self) -> int:
        """The number of diffusion steps."""
        return len(self.betas)

    @property
    def alphas(self) -> tuple[float, ...]:
        """``alpha_t = 1 - beta_t``, ``t = 1..T``."""
        return tuple(1.0 - b for b in self.betas)

    @property
    def alpha_bars(self) -> tuple[float, ...]:
        """``alpha_bar_t = prod_{s <= t} alpha_s``, ``t = 1..T``."""
        return self._alpha_bars  # type: ignore[attr-defined]

    def alpha_bar(self, t: int) -> float:
        """``alpha_bar_t`` for ``t = 0..T`` (``alpha_bar_0 = 1``)."""
        if not 0 <= t <= self.T:
            raise InputError(f"`t` must lie in 0..{self.T}; got {t!r}")
        return 1.0 if t == 0 else self.alpha_bars[t - 1]

    def subsequence(self, steps: int) -> tuple[int, ...]:
        """``steps`` evenly spaced timesteps ``tau_1 < ... < tau_S = T`` (for DDIM).

        ``tau_i = round(i T / S)``, so ``tau_S = T``.

        Parameters
        ----------
        steps : int
            ``S``, with ``1 <= S <= T``.

        Returns
        -------
        tuple of int
            Increasing timesteps in ``1..T``.
        """
        if isinstance(steps, bool) or not isinstance(steps, int) or not 1 <= steps <= self.T:
            raise InputError(f"`steps` must be an int in 1..T = 1..{self.T}; got {steps!r}")
        return tuple(round(i * self.T / steps) for i in range(1, steps + 1))


@dataclass(frozen=True)
class SamplerPlan:
    """The scalars of a sampler's recurrence ``x' = a_l x + b_l eps(x, t_l) + c_l z_l``.

    Step ``l = 0..S-1`` of the recurrence goes from timestep ``timesteps[l]`` to
    ``prev_timesteps[l]`` (``timesteps`` is decreasing; ``prev_timesteps[-1] == 0``).

    Attributes
    ----------
    sampler : str
        ``"ddpm"`` or ``"ddim"``.
    timesteps : tuple of int, length S
        The timestep ``t`` that step ``l`` starts from (the one given to the denoiser).
    prev_timesteps : tuple of int, length S
        The timestep step ``l`` arrives at.
    scale : tuple of float, length S
        ``a_l``, the coefficient of ``x_t`` (and the "scheduler" Jacobian).
    eps_coef : tuple of float, length S
        ``b_l``, the coefficient of the predicted noise.
    noise_coef : tuple of float, length S
        ``c_l = sigma_l``, the coefficient of the pre-sampled noise (all zero for a
        deterministic sampler).
    """

    sampler: str
    timesteps: tuple[int, ...]
    prev_timesteps: tuple[int, ...]
    scale: tuple[float, ...]
    eps_coef: tuple[float, ...]
    noise_coef: tuple[float, ...]

    @property
    def steps(self) -> int:
        """``S``, the number of steps of the recurrence."""
        return len(self.timesteps)

    @property
    def stochastic(self) -> bool:
        """Whether the recurrence uses pre-sampled noise (some ``c_l != 0``)."""
        return any(c != 0.0 for c in self.noise_coef)


def plan_sampler(
    schedule: NoiseSchedule,
    sampler: str = "ddpm",
    *,
    timesteps: Sequence[int] | None = None,
    eta: float = 0.0,
    variance: str = "beta",
) -> SamplerPlan:
    """The coefficients of a DDPM or DDIM sampler on ``schedule``.

    DDPM (Ho et al. 2020, Algorithm 2), from ``t`` to ``t - 1`` for ``t = T..1``::

        x_{t-1} = 1/sqrt(alpha_t) (x_t - beta_t / sqrt(1 - alpha_bar_t) eps(x_t, t))
                  + sigma_t z_t

    with ``sigma_t^2 = beta_t`` (``variance="beta"``) or the posterior variance
    ``(1 - alpha_bar_{t-1}) / (1 - alpha_bar_t) beta_t`` (``variance="posterior"``), and
    ``sigma_1 = 0`` (no noise is added in the last step).

    DDIM (Song et al. 2021, eq. 12), from ``t = tau_i`` to ``s = tau_{i-1}`` (``tau_0 = 0``)::

        x0_hat = (x_t - sqrt(1 - alpha_bar_t) eps(x_t, t)) / sqrt(alpha_bar_t)
        x_s = sqrt(alpha_bar_s) x0_hat + sqrt(1 - alpha_bar_s - sigma^2) eps(x_t, t) + sigma z

    with ``sigma = eta sqrt((1 - alpha_bar_s)/(1 - alpha_bar_t)) sqrt(1 - alpha_bar_t /
    alpha_bar_s)``; ``eta = 0`` is the deterministic DDIM sampler.

    Parameters
    ----------
    schedule : NoiseSchedule
        The noise schedule (``T`` steps).
    sampler : {"ddpm", "ddim"}, default "ddpm"
    timesteps : sequence of int, optional
        DDIM only: the increasing sub-sequence ``tau_1 < ... < tau_S`` of ``1..T`` to
        visit (e.g. :meth:`NoiseSchedule.subsequence`); default all of ``1..T``.
    eta : float, default 0.0
        DDIM only: the stochasticity, ``>= 0`` (``eta > 0`` needs ``noise``).
    variance : {"beta", "posterior"}, default "beta"
        DDPM only: the choice of ``sigma_t^2``.

    Returns
    -------
    SamplerPlan
        ``S = T`` steps for DDPM, ``S = len(timesteps)`` for DDIM.

    Examples
    --------
    >>> from pcrsolve.adapters.diffusion import NoiseSchedule, plan_sampler
    >>> plan = plan_sampler(NoiseSchedule.linear(10), "ddim", timesteps=[5, 10])
    >>> plan.timesteps, plan.prev_timesteps, plan.stochastic
    ((10, 5), (5, 0), False)
    """
    if not isinstance(schedule, NoiseSchedule):
        raise InputError(f"`schedule` must be a NoiseSchedule; got {type(schedule).__name__}")
    if sampler not in SAMPLERS:
        raise InputError(f"`sampler` must be one of {SAMPLERS}; got {sampler!r}")
    T = schedule.T
    if sampler == "ddpm":
        if timesteps is not None:
            raise InputError("`timesteps` (a sub-sequence) is for sampler='ddim'; DDPM visits "
                             "every t = T..1")
        if eta != 0.0:
            raise InputError("`eta` is for sampler='ddim'; DDPM's noise level is set by "
                             "`variance`")
        if variance not in ("beta", "posterior"):
            raise InputError(f"`variance` must be 'beta' or 'posterior'; got {variance!r}")
        ts = tuple(range(T, 0, -1))
        a, b, c = [], [], []
        for t in ts:
            beta, abar, abar_prev = schedule.betas[t - 1], schedule.alpha_bar(t), \
                schedule.alpha_bar(t - 1)
            alpha = 1.0 - beta
            a.append(1.0 / math.sqrt(alpha))
            b.append(-beta / (math.sqrt(alpha) * math.sqrt(1.0 - abar)))
            var = beta if variance == "beta" else (1.0 - abar_prev) / (1.0 - abar) * beta
            c.append(0.0 if t == 1 else math.sqrt(var))
        return SamplerPlan("ddpm", ts, tuple(t - 1 for t in ts), tuple(a), tuple(b), tuple(c))

    # DDIM
    if variance != "beta":
        raise InputError("`variance` is for sampler='ddpm'; DDIM's noise level is set by `eta`")
    if not (isinstance(eta, (int, float)) and eta >= 0.0 and math.isfinite(eta)):
        raise InputError(f"`eta` must be a finite number >= 0; got {eta!r}")
    taus = tuple(range(1, T + 1)) if timesteps is None else _check_timesteps(timesteps, T)
    ts = taus[::-1]
    prev = (*taus[-2::-1], 0)
    a, b, c = [], [], []
    for t, s in zip(ts, prev, strict=True):
        abar_t, abar_s = schedule.alpha_bar(t), schedule.alpha_bar(s)
        sigma = eta * math.sqrt((1.0 - abar_s) / (1.0 - abar_t)) * math.sqrt(1.0 - abar_t / abar_s)
        direction = math.sqrt(max(1.0 - abar_s - sigma**2, 0.0))
        a.append(math.sqrt(abar_s / abar_t))
        b.append(direction - math.sqrt(abar_s) * math.sqrt(1.0 - abar_t) / math.sqrt(abar_t))
        c.append(sigma)
    return SamplerPlan("ddim", ts, prev, tuple(a), tuple(b), tuple(c))


def _check_timesteps(timesteps: Sequence[int], T: int) -> tuple[int, ...]:
    try:
        taus = tuple(int(t) for t in timesteps)
        exact = all(int(t) == t for t in timesteps)
    except (TypeError, ValueError):
        raise InputError(f"`timesteps` must be a sequence of ints; got {timesteps!r}") from None
    if not exact or not taus:
        raise InputError(f"`timesteps` must be a non-empty sequence of ints; got {timesteps!r}")
    if any(t2 <= t1 for t1, t2 in itertools.pairwise(taus)):
        raise InputError(f"`timesteps` must be strictly increasing; got {taus}")
    if taus[0] < 1 or taus[-1] > T:
        raise InputError(f"`timesteps` must lie in 1..T = 1..{T}; got {taus[0]}..{taus[-1]}")
    return taus


def _check_inputs(x_T: Any, noise: Any, plan: SamplerPlan) -> Any:
    """Namespace of ``(x_T, noise)`` after checking their shapes against ``plan``."""
    xp = infer_namespace({"x_T": x_T, "noise": noise})
    if x_T.ndim < 1 or x_T.shape[-1] < 1:
        raise InputError(f"`x_T` must have shape (..., D) with D >= 1 (flattened images); "
                         f"got {tuple(x_T.shape)}")
    if not xp.isdtype(x_T.dtype, "real floating"):
        raise InputError(f"`x_T` must have a real floating dtype; got {x_T.dtype}")
    expect = (*x_T.shape[:-1], plan.steps, x_T.shape[-1])
    if plan.stochastic and noise is None:
        raise InputError(
            f"`noise` is required by this {plan.sampler} sampler (it adds noise in its steps): "
            f"pass pre-sampled standard normal noise of shape {expect} (batch of x_T, S, D)"
        )
    if not plan.stochastic and noise is not None:
        raise InputError(
            f"`noise` must be None: this {plan.sampler} sampler is deterministic "
            "(eta = 0) and would ignore it"
        )
    if noise is not None:
        if tuple(noise.shape) != expect:
            raise InputError(
                f"`noise` must have shape {expect} (batch of x_T, S = {plan.steps} steps, "
                f"D = {x_T.shape[-1]}); got {tuple(noise.shape)}"
            )
        if noise.dtype != x_T.dtype:
            raise InputError(f"`noise` must have the dtype of `x_T` ({x_T.dtype}); got "
                             f"{noise.dtype}")
    return xp


def make_step(
    denoiser: Denoiser, plan: SamplerPlan, x_T: Any, noise: Any | None = None
) -> Callable[[Any, Any], Any]:
    """The vectorized step function ``step(x_prev, l)`` of ``plan`` for :func:`pcrsolve.solve`.

    Parameters
    ----------
    denoiser : callable
        ``denoiser(x, t)``: noisy images ``(..., n, D)`` and integer timesteps ``t`` of
        shape ``(n,)`` (values in ``1..T``, one per step) return the predicted noise
        ``(..., n, D)``. Leading batch dims must broadcast (an extra leading axis appears
        when Jacobians are built from JVPs).
    plan : SamplerPlan
        From :func:`plan_sampler`.
    x_T : array, shape (..., D)
        The starting noise (fixes namespace, dtype and device of the coefficients).
    noise : array, shape (..., S, D), optional
        Pre-sampled standard normal noise, ``noise[..., l, :]`` used in step ``l``;
        required when ``plan.stochastic``.

    Returns
    -------
    callable
        ``step(x_prev, l)``: ``(..., n, D)`` states and 0-based step indices ``(n,)`` give
        ``a_l x + b_l eps(x, t_l) + c_l z_l``.
    """
    xp = _check_inputs(x_T, noise, plan)
    return _Sampler(denoiser, plan, x_T, noise, xp).step


class _Sampler:
    """The coefficient arrays of one plan on one namespace/device, and the step/Jacobian."""

    def __init__(self, denoiser: Denoiser, plan: SamplerPlan, x_T: Any, noise: Any | None,
                 xp: Any, schedule: NoiseSchedule | None = None) -> None:
        if not callable(denoiser):
            raise InputError(f"`denoiser` must be callable as denoiser(x, t); got "
                             f"{type(denoiser).__name__}")
        self.denoiser, self.plan, self.xp, self.schedule = denoiser, plan, xp, schedule
        dev, dt = device_of(x_T), x_T.dtype
        self.t = xp.asarray(plan.timesteps, dtype=xp.int64, device=dev)
        self.a = xp.asarray(plan.scale, dtype=dt, device=dev)
        self.b = xp.asarray(plan.eps_coef, dtype=dt, device=dev)
        c = xp.asarray(plan.noise_coef, dtype=dt, device=dev)
        # the noise enters every step as a constant: c_l z_l, precomputed once
        self.shift = None if noise is None else c[:, None] * noise

    def _coef(self, v: Any, l: Any, like: Any) -> Any:
        v = self.xp.take(v, l, axis=0)[:, None]
        return v if v.dtype == like.dtype else self.xp.astype(v, like.dtype)

    def eps(self, x: Any, l: Any) -> Any:
        t = self.xp.take(self.t, l, axis=0)
        e = self.denoiser(x, t)
        if tuple(getattr(e, "shape", ())) != tuple(x.shape):
            raise StepFunctionError(
                f"`denoiser` must return the predicted noise with the shape of its input "
                f"x {tuple(x.shape)} (..., n, D) for timesteps t of shape {tuple(t.shape)}; "
                f"got {getattr(e, 'shape', type(e).__name__)}"
            )
        return e

    def step(self, x: Any, l: Any) -> Any:
        out = self._coef(self.a, l, x) * x + self._coef(self.b, l, x) * self.eps(x, l)
        if self.shift is not None:
            s = self.xp.take(self.shift, l, axis=-2)
            out = out + (s if s.dtype == x.dtype else self.xp.astype(s, x.dtype))
        return out

    def scalar_jacobian(self, data_std: float | None) -> Callable[[Any, Any], Any]:
        """``J_l = a_l I`` (``data_std=None``) or ``(a_l + b_l k_t) I`` as diagonal blocks
        ``(n, D)``, broadcast over the batch."""
        xp, a = self.xp, self.a
        if data_std is not None:
            k = []
            for t in self.plan.timesteps:
                abar = self.schedule.alpha_bar(t)
                k.append(math.sqrt(1.0 - abar) / (abar * data_std**2 + 1.0 - abar))
            a = a + self.b * xp.asarray(k, dtype=a.dtype, device=device_of(a))

        def jac(x: Any, l: Any) -> Any:
            return xp.broadcast_to(self._coef(a, l, x), tuple(x.shape[-2:]))

        return jac

    def jvp(self, denoiser_jvp: Callable[[Any, Any, Any], Any]) -> Callable[[Any, Any, Any], Any]:
        """The step's JVP ``a_l v + b_l (d eps/dx) v`` from the denoiser's."""

        def jvp(x: Any, l: Any, v: Any) -> Any:
            t = self.xp.take(self.t, l, axis=0)
            return self._coef(self.a, l, x) * v + self._coef(self.b, l, x) * denoiser_jvp(x, t, v)

        return jvp


def sample(
    denoiser: Denoiser,
    x_T: Any,
    schedule: NoiseSchedule,
    *,
    sampler: str = "ddpm",
    noise: Any | None = None,
    timesteps: Sequence[int] | None = None,
    eta: float = 0.0,
    variance: str = "beta",
    jacobian: str = "gaussian",
    data_std: float = 1.0,
    denoiser_jvp: Callable[[Any, Any, Any], Any] | None = None,
    **solve_kwargs: Any,
) -> Solution:
    """Run a DDPM/DDIM sampler for all its steps at once with :func:`pcrsolve.solve`.

    Step ``l = 0..S-1`` goes from timestep ``t = tau_{S-l}`` to ``tau_{S-l-1}`` (full DDPM or
    DDIM: from ``t = T - l`` to ``T - l - 1``); see the module docstring and
    :func:`plan_sampler` for the update formulas.

    Parameters
    ----------
    denoiser : callable
        ``denoiser(x, t)``: noisy images ``(..., n, D)`` and integer timesteps of shape
        ``(n,)`` (values in ``1..T``) give the predicted noise ``(..., n, D)``. It must be
        vectorized over the step axis ``-2`` and broadcast over leading batch dims.
    x_T : array, shape (..., D)
        The starting noise (flattened images; leading dims are a batch of samples).
    schedule : NoiseSchedule
        The noise schedule, ``T`` steps.
    sampler : {"ddpm", "ddim"}, default "ddpm"
        Ancestral DDPM (needs ``noise``) or DDIM.
    noise : array, shape (..., S, D), optional
        Pre-sampled standard normal noise: ``noise[..., l, :]`` is the ``z`` of step ``l``
        (the last step's is multiplied by 0 in DDPM). Required for DDPM and DDIM with
        ``eta > 0``, and must be None otherwise. Same library, dtype and batch as ``x_T``.
    timesteps : sequence of int, optional
        DDIM: the increasing sub-sequence ``tau_1 < ... < tau_S`` of ``1..T``; default all.
    eta : float, default 0.0
        DDIM's stochasticity (0: deterministic).
    variance : {"beta", "posterior"}, default "beta"
        DDPM's ``sigma_t^2``.
    jacobian : {"gaussian", "scheduler", "diagonal", "full"}, default "gaussian"
        The Jacobian the parallel iteration uses. ``"gaussian"``: ``J_l = (a_l + b_l k_t)
        I``, the denoiser's Jacobian replaced by that of the optimal denoiser for
        ``N(0, data_std^2 I)`` data, ``k_t = sqrt(1 - abar_t) / (abar_t data_std^2 + 1 -
        abar_t)``; ``"scheduler"``: the denoiser's Jacobian taken as zero, ``J_l = a_l I``
        (both free: no differentiation, elementwise solve); ``"diagonal"``: the diagonal
        of the step's Jacobian (``mode="quasi"``); ``"full"``: the dense one
        (``mode="newton"``). The last two differentiate the denoiser (``D`` JVPs per
        iteration): torch autodiff, ``denoiser_jvp``, or finite differences. Any choice
        gives the same answer; they differ in iterations and cost per iteration.
    data_std : float, default 1.0
        ``jacobian="gaussian"`` only: the assumed standard deviation of the data (per
        pixel), ``> 0``.
    denoiser_jvp : callable, optional
        ``denoiser_jvp(x, t, v)``, the denoiser's Jacobian-vector product (shape of ``v``),
        used by ``"diagonal"`` and ``"full"`` instead of autodiff/finite differences.
    **solve_kwargs
        Passed to :func:`pcrsolve.solve` (``tol``, ``atol``, ``max_iter``, ``init``,
        ``damping``, ``linear_method``, ``fallback``, ``throw``, ``params``, ...), except
        ``mode``, ``jacobian``, ``jacobian_structure`` and ``jvp``, which ``jacobian=``
        decides.

    Returns
    -------
    Solution
        ``states`` of shape ``(..., S, D)``: ``states[..., l, :]`` is the image at timestep
        ``tau_{S-l-1}``; ``states[..., -1, :]`` is the sample ``x_0``.

    Raises
    ------
    InputError
        For a bad ``schedule``, ``sampler``, ``timesteps``, ``jacobian``, ``noise`` shape
        or dtype, or a reserved keyword in ``solve_kwargs``.
    StepFunctionError
        If ``denoiser`` returns the wrong shape.
    ConvergenceError
        If the iteration did not converge and ``throw`` is true (the default).

    Examples
    --------
    >>> import numpy as np
    >>> from pcrsolve.adapters.diffusion import NoiseSchedule, sample, sample_sequential
    >>> rng = np.random.default_rng(0)
    >>> W = rng.standard_normal((4, 4)) / 2
    >>> eps = lambda x, t: np.tanh(x @ W.T + 1e-3 * t[:, None])   # a toy denoiser
    >>> schedule = NoiseSchedule.linear(100)
    >>> x_T, z = rng.standard_normal(4), rng.standard_normal((100, 4))
    >>> sol = sample(eps, x_T, schedule, noise=z)                  # 100 DDPM steps
    >>> ref = sample_sequential(eps, x_T, schedule, noise=z)
    >>> sol.states.shape, bool(np.max(np.abs(sol.states - ref)) < 1e-8)
    ((100, 4), True)
    """
    if jacobian not in JACOBIANS:
        raise InputError(f"`jacobian` must be one of {tuple(JACOBIANS)}; got {jacobian!r}")
    reserved = sorted(k for k in solve_kwargs if k in _RESERVED)
    if reserved:
        raise InputError(
            f"{', '.join(f'`{k}`' for k in reserved)} cannot be passed to sample(): the "
            f"`jacobian` option ({jacobian!r}) decides them"
        )
    if denoiser_jvp is not None and not callable(denoiser_jvp):
        raise InputError(f"`denoiser_jvp` must be callable as denoiser_jvp(x, t, v); got "
                         f"{type(denoiser_jvp).__name__}")
    plan = plan_sampler(schedule, sampler, timesteps=timesteps, eta=eta, variance=variance)
    xp = _check_inputs(x_T, noise, plan)
    if not (isinstance(data_std, (int, float)) and data_std > 0 and math.isfinite(data_std)):
        raise InputError(f"`data_std` must be a finite number > 0; got {data_std!r}")
    s = _Sampler(denoiser, plan, x_T, noise, xp, schedule)
    options: dict[str, Any] = {"mode": JACOBIANS[jacobian]}
    if jacobian in ("gaussian", "scheduler"):
        std = float(data_std) if jacobian == "gaussian" else None
        options.update(jacobian=s.scalar_jacobian(std), jacobian_structure="diagonal")
    elif denoiser_jvp is not None:
        options["jvp"] = s.jvp(denoiser_jvp)
    return solve(s.step, x_T, plan.steps, **options, **solve_kwargs)


def sample_sequential(
    denoiser: Denoiser,
    x_T: Any,
    schedule: NoiseSchedule,
    *,
    sampler: str = "ddpm",
    noise: Any | None = None,
    timesteps: Sequence[int] | None = None,
    eta: float = 0.0,
    variance: str = "beta",
) -> Any:
    """The reference sampler: a plain loop over the steps, one denoiser call each.

    Parameters
    ----------
    denoiser, x_T, schedule, sampler, noise, timesteps, eta, variance
        As in :func:`sample`.

    Returns
    -------
    array, shape (..., S, D)
        The trajectory, laid out as :func:`sample`'s ``states``: ``[..., l, :]`` is the image
        after step ``l``; ``[..., -1, :]`` is the sample ``x_0``.
    """
    plan = plan_sampler(schedule, sampler, timesteps=timesteps, eta=eta, variance=variance)
    xp = _check_inputs(x_T, noise, plan)
    s = _Sampler(denoiser, plan, x_T, noise, xp)
    idx = xp.arange(plan.steps, dtype=xp.int64, device=device_of(x_T))
    x, out = x_T, []
    for i in range(plan.steps):
        x = s.step(x[..., None, :], idx[i:i + 1])[..., 0, :]
        out.append(x)
    return xp.stack(out, axis=-2)

