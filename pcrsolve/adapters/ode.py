"""Explicit ODE integrators as Markov recurrences: integration parallel in time.

An explicit one-step method for ``dx/dt = g(x, t)`` on a time grid ``t_0 < t_1 < .. < t_L``
is the recurrence

    x_{k+1} = Phi(x_k, t_k, h_k),   h_k = t_{k+1} - t_k,   k = 0..L-1,

so :func:`pcrsolve.solve` can compute all ``L`` states at once: Newton on the whole
trajectory, each iteration one ``O(log L)``-depth linear solve (the DEER / DeepPCR
iteration applied to time stepping, cf. Lim et al. 2024, "Parallelizing non-linear
sequential models over the sequence length", and the parareal family of methods).

Two methods:

* ``"euler"`` (explicit Euler, order 1): ``Phi = x + h g(x, t)``,
  ``dPhi/dx = I + h J_g(x, t)``;
* ``"rk4"`` (classical Runge-Kutta, order 4):
  ``k1 = g(x, t)``, ``k2 = g(x + h/2 k1, t + h/2)``, ``k3 = g(x + h/2 k2, t + h/2)``,
  ``k4 = g(x + h k3, t + h)``, ``Phi = x + h/6 (k1 + 2 k2 + 2 k3 + k4)``; its Jacobian by
  the chain rule through the stages,
  ``dk1 = J_g(x, t)``, ``dk2 = J_g(x2, t + h/2) (I + h/2 dk1)``, ``dk3 = J_g(x3, t + h/2)
  (I + h/2 dk2)``, ``dk4 = J_g(x4, t + h) (I + h dk3)``,
  ``dPhi/dx = I + h/6 (dk1 + 2 dk2 + 2 dk3 + dk4)`` (the same recursion applied to a
  tangent vector gives the JVP from ``g_jvp``).

``g(x, t)`` is vectorized like a step function: states ``x`` of shape ``(..., n, w)`` and
times ``t`` of shape ``(n,)`` (use ``t[:, None]`` to broadcast a time against the
features) give ``dx/dt`` of shape ``(..., n, w)``. ``g_jac(x, t)`` returns the dense
Jacobian ``dg/dx`` of shape ``(..., n, w, w)``; ``g_jvp(x, t, v)`` returns
``(dg/dx) v`` of the shape of ``v``. All three must accept leading batch dims that
broadcast (pcrsolve adds a leading axis of size ``w`` when it assembles Jacobians from
JVPs). Everything here is written against the Array API: NumPy, PyTorch, CuPy and
``array_api_strict`` states all work.

Parallel-in-time integration pays off when the trajectory is *stable* (perturbations
decay, e.g. a stiff but dissipative system integrated inside its stability region):
Newton then converges in a few iterations. For a *chaotic* system (Lorenz) errors grow
exponentially along the trajectory, no linearisation is valid for long, and the iteration
needs about as many iterations as steps; there the sequential loop is the right tool
(``fallback=True`` uses it automatically).
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import array_api_compat

from ..errors import BackendMismatchError, InputError
from ..namespace import device_of, infer_namespace
from ..newton import solve
from ..result import Solution

__all__ = [
    "METHODS",
    "ODERecurrence",
    "euler_step",
    "integrate",
    "integrate_sequential",
    "recurrence",
    "rk4_step",
]

#: The explicit integrators available, by name.
METHODS = ("euler", "rk4")

#: ``g(x, t) -> dx/dt``: states ``(..., n, w)``, times ``(n,)`` -> ``(..., n, w)``.
VectorField = Callable[[Any, Any], Any]
#: ``g_jac(x, t) -> dg/dx``: ``(..., n, w)``, ``(n,)`` -> ``(..., n, w, w)``.
VectorFieldJacobian = Callable[[Any, Any], Any]
#: ``g_jvp(x, t, v) -> (dg/dx) v``: ``(..., n, w)``, ``(n,)``, ``(..., n, w)`` -> ``(..., n, w)``.
VectorFieldJVP = Callable[[Any, Any, Any], Any]


# -- the time grid ------------------------------------------------------------------------


class _TimeGrid:
    """A validated time grid ``t_0 < .. < t_L``, materialised per namespace/dtype/device.

    The steps look up ``t_k`` and ``h_k = t_{k+1} - t_k`` by their 0-based index ``k``.
    ``h_k`` is computed in the grid's own precision (float64 for Python sequences) and
    then cast to the states' dtype, so a float32 trajectory on a float64 grid keeps
    accurate step sizes.
    """

    def __init__(self, t_grid: Any) -> None:
        self.source = t_grid
        if array_api_compat.is_array_api_obj(t_grid):
            self.floats: tuple[float, ...] | None = None
            self.length = _validate_grid_array(t_grid)
        else:
            self.floats = _validate_grid_sequence(t_grid)
            self.length = len(self.floats) - 1
        self._cache: dict[tuple[str, str, str], tuple[Any, Any]] = {}

    def arrays(self, like: Any) -> tuple[Any, Any]:
        """``(t_k, h_k)`` for ``k = 0..L-1``, each of shape ``(L,)``, as arrays like ``like``."""
        xp = array_api_compat.array_namespace(like)
        dev = device_of(like)
        key = (xp.__name__, str(like.dtype), str(dev))
        hit = self._cache.get(key)
        if hit is not None:
            return hit
        if self.floats is not None:
            t = self.floats
            tk = xp.asarray(list(t[:-1]), dtype=like.dtype, device=dev)
            hk = xp.asarray([b - a for a, b in itertools.pairwise(t)],
                            dtype=like.dtype, device=dev)
        else:
            try:
                T = xp.asarray(self.source, device=dev)
            except Exception as exc:  # another library's array that xp cannot read
                raise BackendMismatchError(
                    f"`t_grid` ({type(self.source).__module__}.{type(self.source).__name__}) "
                    f"cannot be converted to the states' library {xp.__name__}: {exc}. Pass "
                    "it as an array of that library or as a list of floats."
                ) from exc
            if not xp.isdtype(T.dtype, "real floating"):
                T = xp.astype(T, like.dtype)
            tk = xp.astype(T[:-1], like.dtype)
            hk = xp.astype(T[1:] - T[:-1], like.dtype)
        self._cache[key] = (tk, hk)
        return tk, hk

    def at(self, like: Any, l: Any) -> tuple[Any, Any]:
        """``(t_l, h_l)`` of shape ``(n,)`` for step indices ``l`` of shape ``(n,)``."""
        xp = array_api_compat.array_namespace(like)
        tk, hk = self.arrays(like)
        return xp.take(tk, l, axis=0), xp.take(hk, l, axis=0)


def _validate_grid_array(t: Any) -> int:
    xp = array_api_compat.array_namespace(t)
    shape = tuple(t.shape)
    if len(shape) != 1:
        raise InputError(
            f"`t_grid` must be a 1-D array of times t_0 < t_1 < .. < t_L; got shape {shape}"
        )
    if shape[0] < 2:
        raise InputError(
            f"`t_grid` must hold at least 2 times (t_0 and t_L: L >= 1 steps); got {shape[0]}"
        )
    if not (xp.isdtype(t.dtype, "real floating") or xp.isdtype(t.dtype, "integral")):
        raise InputError(f"`t_grid` must have a real numeric dtype; got {t.dtype}")
    if xp.isdtype(t.dtype, "real floating") and not bool(xp.all(xp.isfinite(t))):
        raise InputError("`t_grid` holds NaN or Inf values; all times must be finite")
    ok = t[1:] > t[:-1]
    if not bool(xp.all(ok)):
        k = int(xp.argmin(xp.astype(ok, xp.int8)))
        raise InputError(
            f"`t_grid` must be strictly increasing; t[{k + 1}] = {float(t[k + 1])!r} is not "
            f"greater than t[{k}] = {float(t[k])!r}"
        )
    return shape[0] - 1


def _validate_grid_sequence(t: Any) -> tuple[float, ...]:
    if not isinstance(t, Sequence) or isinstance(t, str | bytes):
        raise InputError(
            "`t_grid` must be a 1-D array or a sequence of times t_0 < t_1 < .. < t_L; got "
            f"{type(t).__name__}"
        )
    try:
        values = tuple(float(v) for v in t)
    except (TypeError, ValueError) as exc:
        raise InputError(
            f"`t_grid` must be a flat sequence of real numbers (1-D); got {t!r:.80}"
        ) from exc
    if len(values) < 2:
        raise InputError(
            f"`t_grid` must hold at least 2 times (t_0 and t_L: L >= 1 steps); got {len(values)}"
        )
    for k, (a, b) in enumerate(itertools.pairwise(values)):
        if not (b > a) or b - a == float("inf"):
            raise InputError(
                f"`t_grid` must be finite and strictly increasing; t[{k + 1}] = {b!r} is not "
                f"greater than t[{k}] = {a!r}"
            )
    return values


def _check_method(method: str) -> None:
    if method not in METHODS:
        raise InputError(f"`method` must be one of {METHODS}; got {method!r}")


def _check_callable(name: str, fn: Any, signature: str, *, optional: bool = False) -> None:
    if not (optional and fn is None) and not callable(fn):
        raise InputError(f"`{name}` must be callable as {signature}; got {type(fn).__name__}")


def _col(h: Any) -> Any:
    """Step sizes ``(n,)`` shaped to broadcast against states ``(..., n, w)``."""
    return h[:, None]


def _eye(x: Any) -> Any:
    xp = array_api_compat.array_namespace(x)
    return xp.eye(x.shape[-1], dtype=x.dtype, device=device_of(x))


# -- step functions -----------------------------------------------------------------------


def euler_step(g: VectorField, t_grid: Any) -> Callable[[Any, Any], Any]:
    """The explicit Euler step ``x_{k+1} = x_k + h_k g(x_k, t_k)`` on ``t_grid``.

    Parameters
    ----------
    g : callable
        ``g(x, t)``: states ``(..., n, w)`` and times ``(n,)`` to ``dx/dt`` ``(..., n, w)``.
    t_grid : array or sequence of float, shape (L + 1,)
        Strictly increasing times ``t_0 .. t_L`` (uniform or not).

    Returns
    -------
    callable
        ``step(x_prev, l)``: states ``(..., n, w)`` and 0-based step indices ``(n,)``
        (``l = k`` advances from ``t_k`` to ``t_{k+1}``) to the next states ``(..., n, w)``.

    Raises
    ------
    InputError
        If ``g`` is not callable or ``t_grid`` is not 1-D, strictly increasing, with at
        least 2 points.

    Examples
    --------
    >>> import numpy as np
    >>> from pcrsolve.adapters.ode import euler_step
    >>> step = euler_step(lambda x, t: -x, [0.0, 0.5, 1.0])
    >>> step(np.ones((2, 1)), np.arange(2)).ravel().tolist()
    [0.5, 0.5]
    """
    _check_callable("g", g, "g(x, t)")
    grid = t_grid if isinstance(t_grid, _TimeGrid) else _TimeGrid(t_grid)

    def step(x: Any, l: Any) -> Any:
        t, h = grid.at(x, l)
        return x + _col(h) * g(x, t)

    return step


def _rk4_stages(g: VectorField, x: Any, t: Any, h: Any) -> tuple[Any, ...]:
    """Stage inputs and slopes of one RK4 step: ``(x2, x3, x4, k1, k2, k3, k4)``."""
    hc = _col(h)
    th = t + 0.5 * h
    k1 = g(x, t)
    x2 = x + 0.5 * hc * k1
    k2 = g(x2, th)
    x3 = x + 0.5 * hc * k2
    k3 = g(x3, th)
    x4 = x + hc * k3
    k4 = g(x4, t + h)
    return x2, x3, x4, k1, k2, k3, k4


def rk4_step(g: VectorField, t_grid: Any) -> Callable[[Any, Any], Any]:
    """The classical fourth-order Runge-Kutta step on ``t_grid``.

    ``x_{k+1} = x_k + h_k/6 (k1 + 2 k2 + 2 k3 + k4)`` with the usual stages
    (see the module docstring).

    Parameters
    ----------
    g : callable
        ``g(x, t)``: states ``(..., n, w)`` and times ``(n,)`` to ``dx/dt`` ``(..., n, w)``.
    t_grid : array or sequence of float, shape (L + 1,)
        Strictly increasing times ``t_0 .. t_L`` (uniform or not).

    Returns
    -------
    callable
        ``step(x_prev, l)``: states ``(..., n, w)`` and 0-based step indices ``(n,)`` to the
        next states ``(..., n, w)``.

    Raises
    ------
    InputError
        If ``g`` is not callable or ``t_grid`` is invalid.

    Examples
    --------
    >>> import numpy as np
    >>> from pcrsolve.adapters.ode import rk4_step
    >>> step = rk4_step(lambda x, t: -x, [0.0, 0.1])
    >>> float(step(np.ones((1, 1)), np.arange(1))[0, 0])   # 1 - h + h^2/2 - h^3/6 + h^4/24
    0.9048375
    """
    _check_callable("g", g, "g(x, t)")
    grid = t_grid if isinstance(t_grid, _TimeGrid) else _TimeGrid(t_grid)

    def step(x: Any, l: Any) -> Any:
        t, h = grid.at(x, l)
        _, _, _, k1, k2, k3, k4 = _rk4_stages(g, x, t, h)
        return x + (_col(h) / 6.0) * (k1 + 2.0 * k2 + 2.0 * k3 + k4)

    return step


# -- Jacobians of the steps ---------------------------------------------------------------


def _euler_jacobian(g_jac: VectorFieldJacobian, grid: _TimeGrid) -> Callable[[Any, Any], Any]:
    def jacobian(x: Any, l: Any) -> Any:
        t, h = grid.at(x, l)
        return _eye(x) + h[:, None, None] * g_jac(x, t)

    return jacobian


def _euler_jvp(g_jvp: VectorFieldJVP, grid: _TimeGrid) -> Callable[[Any, Any, Any], Any]:
    def jvp(x: Any, l: Any, v: Any) -> Any:
        t, h = grid.at(x, l)
        return v + _col(h) * g_jvp(x, t, v)

    return jvp


def _rk4_jacobian(
    g: VectorField, g_jac: VectorFieldJacobian, grid: _TimeGrid
) -> Callable[[Any, Any], Any]:
    def jacobian(x: Any, l: Any) -> Any:
        xp = array_api_compat.array_namespace(x)
        t, h = grid.at(x, l)
        x2, x3, x4, *_ = _rk4_stages(g, x, t, h)
        hm = h[:, None, None]
        eye = _eye(x)
        th = t + 0.5 * h
        d1 = g_jac(x, t)
        d2 = xp.matmul(g_jac(x2, th), eye + 0.5 * hm * d1)
        d3 = xp.matmul(g_jac(x3, th), eye + 0.5 * hm * d2)
        d4 = xp.matmul(g_jac(x4, t + h), eye + hm * d3)
        return eye + (hm / 6.0) * (d1 + 2.0 * d2 + 2.0 * d3 + d4)

    return jacobian


def _rk4_jvp(g: VectorField, g_jvp: VectorFieldJVP, grid: _TimeGrid) -> Callable[..., Any]:
    def jvp(x: Any, l: Any, v: Any) -> Any:
        t, h = grid.at(x, l)
        x2, x3, x4, *_ = _rk4_stages(g, x, t, h)
        hc = _col(h)
        th = t + 0.5 * h
        u1 = g_jvp(x, t, v)
        u2 = g_jvp(x2, th, v + 0.5 * hc * u1)
        u3 = g_jvp(x3, th, v + 0.5 * hc * u2)
        u4 = g_jvp(x4, t + h, v + hc * u3)
        return v + (hc / 6.0) * (u1 + 2.0 * u2 + 2.0 * u3 + u4)

    return jvp


@dataclass
class ODERecurrence:
    """An explicit integrator on a time grid, as the pieces :func:`pcrsolve.solve` takes.

    Attributes
    ----------
    step : callable
        ``step(x_prev, l)``: ``(..., n, w)`` states, ``(n,)`` indices -> ``(..., n, w)``.
    length : int
        ``L``, the number of steps (``len(t_grid) - 1``).
    method : str
        ``"euler"`` or ``"rk4"``.
    jacobian : callable or None
        ``jacobian(x_prev, l)`` -> dense ``(..., n, w, w)`` blocks ``dPhi/dx`` (built from
        ``g_jac``), or ``None``.
    jvp : callable or None
        ``jvp(x_prev, l, v)`` -> ``(dPhi/dx) v`` of the shape of ``v`` (built from
        ``g_jvp``), or ``None``.
    grid : object
        The validated time grid (use :meth:`times` to read it).
    """

    step: Callable[[Any, Any], Any]
    length: int
    method: str
    jacobian: Callable[[Any, Any], Any] | None = None
    jvp: Callable[[Any, Any, Any], Any] | None = None
    grid: Any = field(default=None, repr=False)

    def times(self, like: Any) -> tuple[Any, Any]:
        """The step start times ``t_k`` and sizes ``h_k``, ``k = 0..L-1``.

        Parameters
        ----------
        like : array
            An array whose library, dtype and device the result takes.

        Returns
        -------
        t : array, shape (L,)
        h : array, shape (L,)
        """
        return self.grid.arrays(like)

    def solve_kwargs(self) -> dict[str, Any]:
        """``jacobian=`` / ``jvp=`` for :func:`pcrsolve.solve` (only those that are set)."""
        out: dict[str, Any] = {}
        if self.jacobian is not None:
            out["jacobian"] = self.jacobian
        elif self.jvp is not None:
            out["jvp"] = self.jvp
        return out


def recurrence(
    g: VectorField,
    t_grid: Any,
    *,
    method: str = "euler",
    g_jac: VectorFieldJacobian | None = None,
    g_jvp: VectorFieldJVP | None = None,
) -> ODERecurrence:
    """The integrator ``method`` of ``dx/dt = g(x, t)`` on ``t_grid`` as a recurrence.

    Parameters
    ----------
    g : callable
        ``g(x, t)``: states ``(..., n, w)`` and times ``(n,)`` to ``dx/dt`` ``(..., n, w)``.
    t_grid : array or sequence of float, shape (L + 1,)
        Strictly increasing times ``t_0 .. t_L``.
    method : {"euler", "rk4"}, default "euler"
        The explicit one-step method.
    g_jac : callable, optional
        ``g_jac(x, t)`` -> ``dg/dx`` of shape ``(..., n, w, w)``. Gives the step's dense
        Jacobian analytically (Euler ``I + h J_g``; RK4 by the chain rule of the stages).
    g_jvp : callable, optional
        ``g_jvp(x, t, v)`` -> ``(dg/dx) v``, shape of ``v`` ``(..., n, w)``. Gives the
        step's JVP (used when ``g_jac`` is not given). With neither, :func:`pcrsolve.solve`
        differentiates the step itself (autodiff for torch, finite differences otherwise).

    Returns
    -------
    ODERecurrence
        ``step``, ``length``, ``method`` and the ``jacobian``/``jvp`` built from
        ``g_jac``/``g_jvp``.

    Raises
    ------
    InputError
        If ``method`` is unknown, a function is not callable, or ``t_grid`` is invalid.

    Examples
    --------
    >>> import numpy as np
    >>> import pcrsolve
    >>> from pcrsolve.adapters.ode import recurrence
    >>> A = np.array([[0.0, 1.0], [-1.0, 0.0]])           # harmonic oscillator
    >>> rec = recurrence(lambda x, t: x @ A.T, np.linspace(0, 1, 11), method="rk4",
    ...                  g_jac=lambda x, t: np.broadcast_to(A, x.shape + (2,)))
    >>> sol = pcrsolve.solve(rec.step, np.array([1.0, 0.0]), rec.length,
    ...                      **rec.solve_kwargs())
    >>> sol.iterations, np.round(sol.states[-1], 5).tolist()   # (cos 1, -sin 1)
    (2, [0.5403, -0.84147])
    """
    _check_method(method)
    _check_callable("g", g, "g(x, t)")
    _check_callable("g_jac", g_jac, "g_jac(x, t)", optional=True)
    _check_callable("g_jvp", g_jvp, "g_jvp(x, t, v)", optional=True)
    grid = _TimeGrid(t_grid)
    if method == "euler":
        return ODERecurrence(
            euler_step(g, grid), grid.length, method,
            jacobian=None if g_jac is None else _euler_jacobian(g_jac, grid),
            jvp=None if g_jvp is None else _euler_jvp(g_jvp, grid), grid=grid,
        )
    return ODERecurrence(
        rk4_step(g, grid), grid.length, method,
        jacobian=None if g_jac is None else _rk4_jacobian(g, g_jac, grid),
        jvp=None if g_jvp is None else _rk4_jvp(g, g_jvp, grid), grid=grid,
    )


# -- public entry points ------------------------------------------------------------------


def _check_x0(x0: Any) -> Any:
    xp = infer_namespace({"x0": x0})
    if x0.ndim < 1 or x0.shape[-1] < 1:
        raise InputError(
            f"`x0` must have shape (..., w) with w >= 1 (leading dims are the batch); got "
            f"{tuple(x0.shape)}"
        )
    return xp


def _probe(name: str, fn: Callable[..., Any], args: tuple[Any, ...], expect: tuple[int, ...],
           x0: Any) -> None:
    """Call ``fn`` on ``x0`` at ``t_0`` once: a clear error for a width mismatch."""
    try:
        out = fn(*args)
    except Exception as exc:
        raise InputError(
            f"`{name}` failed on `x0` of shape {tuple(x0.shape)} (called with x of shape "
            f"{tuple(args[0].shape)} and t of shape (1,)); is the width w = {x0.shape[-1]} of "
            f"`x0` the dimension of the system? {type(exc).__name__}: {exc}"
        ) from exc
    shape = tuple(getattr(out, "shape", ()))
    if shape != expect:
        raise InputError(
            f"`{name}` returned shape {shape} for x of shape {tuple(args[0].shape)}; expected "
            f"{expect}. Is the width w = {x0.shape[-1]} of `x0` the dimension of the system?"
        )


def integrate(
    g: VectorField,
    x0: Any,
    t_grid: Any,
    *,
    method: str = "euler",
    g_jac: VectorFieldJacobian | None = None,
    g_jvp: VectorFieldJVP | None = None,
    **solve_kwargs: Any,
) -> Solution:
    """Integrate ``dx/dt = g(x, t)`` over ``t_grid``, all time steps at once.

    The explicit integrator ``method`` is written as the recurrence
    ``x_{k+1} = Phi(x_k, t_k, h_k)`` and solved by :func:`pcrsolve.solve` (Newton on the
    whole trajectory, one parallel linear solve per iteration).

    Parameters
    ----------
    g : callable
        ``g(x, t)``: states ``(..., n, w)`` and times ``(n,)`` to ``dx/dt`` ``(..., n, w)``;
        leading batch dims must broadcast.
    x0 : array, shape (..., w)
        The state at ``t_0``; leading dims are a batch of initial conditions.
    t_grid : array or sequence of float, shape (L + 1,)
        Strictly increasing times ``t_0 .. t_L``, uniform or not.
    method : {"euler", "rk4"}, default "euler"
        The explicit one-step method.
    g_jac : callable, optional
        ``g_jac(x, t)`` -> ``dg/dx`` of shape ``(..., n, w, w)``: analytic step Jacobians.
    g_jvp : callable, optional
        ``g_jvp(x, t, v)`` -> ``(dg/dx) v`` of shape ``(..., n, w)``: step JVPs (used when
        ``g_jac`` is not given).
    **solve_kwargs
        Passed to :func:`pcrsolve.solve` (``mode``, ``tol``, ``max_iter``, ``fallback``,
        ``throw``, ``init``, ``params``, ...), except ``jacobian`` and ``jvp``, which come
        from ``g_jac``/``g_jvp``.

    Returns
    -------
    Solution
        ``states`` of shape ``(..., L, w)``: ``states[..., k - 1, :]`` approximates
        ``x(t_k)``, ``k = 1..L`` (``x0`` is not repeated); and the solve's ``status``,
        ``iterations`` and ``residuals``.

    Raises
    ------
    InputError
        For a bad ``t_grid``, ``method``, ``x0`` or a ``g``/``g_jac``/``g_jvp`` that does
        not fit the width of ``x0`` (the message names the argument).
    ConvergenceError
        If the solve did not converge and ``throw`` is true (the default).

    Examples
    --------
    >>> import numpy as np
    >>> from pcrsolve.adapters.ode import integrate
    >>> t = np.linspace(0.0, 2.0, 201)
    >>> g = lambda x, t: -50.0 * (x - np.cos(t)[:, None])    # stiff, stable for h < 0.04
    >>> sol = integrate(g, np.zeros(1), t, method="rk4")
    >>> sol.status.name, sol.iterations <= 3, sol.states.shape
    ('CONVERGED', True, (200, 1))
    """
    _check_method(method)
    for name in ("jacobian", "jvp"):
        if name in solve_kwargs:
            raise InputError(
                f"`{name}` cannot be passed to integrate(): give the vector field's "
                "Jacobian as `g_jac` or its JVP as `g_jvp` and the step's are built from it"
            )
    rec = recurrence(g, t_grid, method=method, g_jac=g_jac, g_jvp=g_jvp)
    _check_x0(x0)
    xs = x0[..., None, :]
    t0 = rec.times(xs)[0][:1]
    shape = tuple(xs.shape)
    _probe("g", g, (xs, t0), shape, x0)
    if g_jac is not None:
        _probe("g_jac", g_jac, (xs, t0), (*shape, shape[-1]), x0)
    elif g_jvp is not None:
        _probe("g_jvp", g_jvp, (xs, t0, xs), shape, x0)
    return solve(rec.step, x0, rec.length, **rec.solve_kwargs(), **solve_kwargs)


def integrate_sequential(
    g: VectorField, x0: Any, t_grid: Any, *, method: str = "euler"
) -> Any:
    """The reference: integrate ``dx/dt = g(x, t)`` with the plain loop, one step at a time.

    It calls the same step function as :func:`integrate` on one step per call
    (``g`` with ``x`` of shape ``(..., 1, w)`` and ``t`` of shape ``(1,)``).

    Parameters
    ----------
    g : callable
        ``g(x, t)``: states ``(..., n, w)`` and times ``(n,)`` to ``dx/dt`` ``(..., n, w)``.
    x0 : array, shape (..., w)
        The state at ``t_0``.
    t_grid : array or sequence of float, shape (L + 1,)
        Strictly increasing times ``t_0 .. t_L``.
    method : {"euler", "rk4"}, default "euler"
        The explicit one-step method.

    Returns
    -------
    array, shape (..., L, w)
        ``x_1 .. x_L``, the states at ``t_1 .. t_L``.

    Raises
    ------
    InputError
        For a bad ``t_grid``, ``method``, ``x0`` or a ``g`` that does not fit ``x0``.

    Examples
    --------
    >>> import numpy as np
    >>> from pcrsolve.adapters.ode import integrate_sequential
    >>> integrate_sequential(lambda x, t: -x, np.ones(1), [0.0, 0.5, 1.0]).ravel().tolist()
    [0.5, 0.25]
    """
    _check_method(method)
    rec = recurrence(g, t_grid, method=method)
    xp = _check_x0(x0)
    x = x0[..., None, :]
    _probe("g", g, (x, rec.times(x)[0][:1]), tuple(x.shape), x0)
    idx = xp.arange(rec.length, dtype=xp.int64, device=device_of(x0))
    out = []
    for k in range(rec.length):
        x = rec.step(x, idx[k : k + 1])
        out.append(x)
    return xp.concat(out, axis=-2)
