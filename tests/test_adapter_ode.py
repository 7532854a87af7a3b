"""The ODE adapter: explicit Euler and RK4, parallel in time, against the plain loop.

Three problems, each written once against the Array API:

* a linear system ``dx/dt = A x`` (damped rotation), with the exact solution
  ``expm(A (t - t0)) x0`` to check each method's order of accuracy;
* a stiff but stable one, ``dx/dt = -50 (x - cos t) - x^3``, integrated inside the
  methods' stability region: Newton converges in a few iterations;
* Lorenz (chaotic) over a long horizon: the parallel iteration honestly reports
  non-convergence with a small ``max_iter``, and ``fallback=True`` gives the loop's answer.

The references are plain NumPy float64 loops written here, independent of the adapter.
"""

from __future__ import annotations

from typing import Any

import array_api_compat
import numpy as np
import pytest
from conftest import tolerance
from linear_problems import rel_err
from scipy.linalg import expm

import pcrsolve
from pcrsolve import ConvergenceError, InputError, Status
from pcrsolve.adapters import ode
from pcrsolve.jacobians import finite_difference_jvp

METHODS = ("euler", "rk4")
ORDER = {"euler": 1, "rk4": 4}

# -- problems -------------------------------------------------------------------------------

A_LIN = np.array([[-0.3, 2.0, 0.0], [-2.0, -0.3, 0.0], [0.0, 0.5, -1.0]])


def linear(A: Any) -> tuple[Any, Any, Any]:
    """``g = A x``, ``g_jac = A``, ``g_jvp = A v`` for ``A`` of any namespace."""

    def g(x, t):
        xp = array_api_compat.array_namespace(x)
        return xp.matmul(x, xp.matrix_transpose(A))

    def g_jac(x, t):
        xp = array_api_compat.array_namespace(x)
        return xp.broadcast_to(A, (*x.shape, x.shape[-1]))

    def g_jvp(x, t, v):
        xp = array_api_compat.array_namespace(v)
        return xp.matmul(v, xp.matrix_transpose(A))

    return g, g_jac, g_jvp


STIFF_RATE = 50.0


def stiff(x, t):
    """``-50 (x - cos t) - x^3``: eigenvalues about -50..-53 near the solution."""
    xp = array_api_compat.array_namespace(x)
    return -STIFF_RATE * (x - xp.cos(t)[:, None]) - x**3


def stiff_jac(x, t):
    xp = array_api_compat.array_namespace(x)
    eye = xp.eye(x.shape[-1], dtype=x.dtype, device=array_api_compat.device(x))
    return (-STIFF_RATE - 3.0 * x**2)[..., None] * eye


def stiff_jvp(x, t, v):
    return (-STIFF_RATE - 3.0 * x**2) * v


def lorenz(x, t, sigma=10.0, rho=28.0, beta=8.0 / 3.0):
    xp = array_api_compat.array_namespace(x)
    X, Y, Z = x[..., 0], x[..., 1], x[..., 2]
    return xp.stack([sigma * (Y - X), X * (rho - Z) - Y, X * Y - beta * Z], axis=-1)


def lorenz_jac(x, t, sigma=10.0, rho=28.0, beta=8.0 / 3.0):
    xp = array_api_compat.array_namespace(x)
    X, Y, Z = x[..., 0], x[..., 1], x[..., 2]
    o, z = xp.ones_like(X), xp.zeros_like(X)
    rows = [xp.stack([-sigma * o, sigma * o, z], axis=-1),
            xp.stack([rho - Z, -o, -X], axis=-1),
            xp.stack([Y, X, -beta * o], axis=-1)]
    return xp.stack(rows, axis=-2)


def numpy_loop(g, x0: np.ndarray, t: np.ndarray, method: str) -> np.ndarray:
    """Independent float64 reference: one step at a time with scalar times."""
    x = np.asarray(x0, np.float64)[..., None, :]
    out = []
    for k in range(len(t) - 1):
        tk, h = np.array([t[k]]), t[k + 1] - t[k]
        if method == "euler":
            x = x + h * g(x, tk)
        else:
            k1 = g(x, tk)
            k2 = g(x + h / 2 * k1, tk + h / 2)
            k3 = g(x + h / 2 * k2, tk + h / 2)
            k4 = g(x + h * k3, tk + h)
            x = x + h / 6 * (k1 + 2 * k2 + 2 * k3 + k4)
        out.append(x[..., 0, :])
    return np.stack(out, axis=-2)


def jittered_grid(rng: np.random.Generator, T: float, L: int) -> np.ndarray:
    """A non-uniform grid on [0, T]: interior points moved by up to 30% of a step."""
    t = np.linspace(0.0, T, L + 1)
    t[1:-1] += 0.3 * (T / L) * rng.uniform(-1, 1, L - 1)
    return t


# -- linear system: loop agreement and the exact solution --------------------------------


@pytest.mark.parametrize("dtype", ["float64", "float32"])
@pytest.mark.parametrize("method", METHODS)
def test_linear_matches_loop_and_exact(backend, rng, method, dtype):
    L, T = 80, 3.0
    t = jittered_grid(rng, T, L)
    x0 = rng.standard_normal((2, 3))
    g, g_jac, _ = linear(backend(A_LIN, dtype))
    sol = ode.integrate(g, backend(x0, dtype), backend(t, dtype), method=method,
                        g_jac=g_jac)
    assert sol.status is Status.CONVERGED
    assert sol.iterations <= 3  # linear in x: one Newton step, one to confirm
    got = backend.back(sol.states)
    assert got.shape == (2, L, 3)
    ref = numpy_loop(linear(A_LIN)[0], x0, t, method)
    assert rel_err(got, ref) <= tolerance(dtype, L, factor=200)
    # against the exact solution, within the method's known error order
    exact = np.stack([x0 @ expm(A_LIN * (tk - t[0])).T for tk in t[1:]], axis=-2)
    # (global error <= C h^p max|x0|; C measured over 200 random grids and x0: Euler
    # 2.8, RK4 0.17, with ~50% margin here)
    h = float(np.max(np.diff(t)))
    bound = {"euler": 4.0, "rk4": 0.25}[method] * h ** ORDER[method] * np.max(np.abs(x0))
    assert np.max(np.abs(ref - exact)) <= bound
    assert np.max(np.abs(got - exact)) <= bound + tolerance(dtype, L, 200) * np.max(np.abs(ref))


@pytest.mark.parametrize("method", METHODS)
def test_order_of_accuracy(method):
    # halving h divides the global error by 2^p
    x0 = np.array([1.0, -0.5, 0.25])
    g, g_jac, _ = linear(A_LIN)
    errs = []
    for L in (40, 80):
        t = np.linspace(0.0, 2.0, L + 1)
        sol = ode.integrate(g, x0, t, method=method, g_jac=g_jac)
        exact = x0 @ expm(A_LIN * 2.0).T
        errs.append(float(np.max(np.abs(sol.states[-1] - exact))))
    order = np.log2(errs[0] / errs[1])
    assert abs(order - ORDER[method]) < 0.25, (errs, order)


# -- stiff but stable: few Newton iterations ------------------------------------------------


@pytest.mark.parametrize("dtype", ["float64", "float32"])
@pytest.mark.parametrize("method", METHODS)
def test_stiff_converges_in_few_iterations(backend, rng, method, dtype):
    L, h = 500, 0.01  # h * 53 = 0.53: inside both stability regions (Euler 2, RK4 2.78)
    t = np.arange(L + 1) * h
    x0 = rng.uniform(-1, 1, (3, 2))
    sol = ode.integrate(stiff, backend(x0, dtype), list(t), method=method, g_jac=stiff_jac)
    assert sol.status is Status.CONVERGED
    assert sol.iterations <= 6
    got = backend.back(sol.states)
    ref = numpy_loop(stiff, x0, t, method)
    assert rel_err(got, ref) <= tolerance(dtype, L, factor=200)
    # the adapter's own loop is the same recurrence
    loop = backend.back(ode.integrate_sequential(stiff, backend(x0, dtype), list(t),
                                                 method=method))
    assert rel_err(got, loop) <= tolerance(dtype, L, factor=200)
    # a stable integration tracks the slow manifold x ~ cos t
    assert np.max(np.abs(ref[:, -1, :] - np.cos(t[-1]))) < 0.05


@pytest.mark.parametrize("method", METHODS)
def test_analytic_and_default_jacobians_agree(backend, rng, method):
    L = 200
    t = jittered_grid(rng, 2.0, L)
    x0 = rng.uniform(-1, 1, (2,))
    tb = backend(t)
    rec = ode.recurrence(stiff, tb, method=method, g_jac=stiff_jac, g_jvp=stiff_jvp)
    # the step's Jacobian blocks: g_jac chain rule vs g_jvp vs central differences
    xs = backend(rng.uniform(-1, 1, (L, 2)))
    v = backend(rng.standard_normal((L, 2)))
    idx = array_api_compat.array_namespace(xs).arange(L)
    J = backend.back(rec.jacobian(xs, idx))
    Jv = backend.back(rec.jvp(xs, idx, v))
    np.testing.assert_allclose(np.einsum("nij,nj->ni", J, backend.back(v)), Jv,
                               rtol=1e-12, atol=1e-12)
    xp = array_api_compat.array_namespace(xs)
    fd = backend.back(finite_difference_jvp(rec.step, xp)(xs, idx, v))
    np.testing.assert_allclose(fd, Jv, rtol=1e-7, atol=1e-7)
    # the three ways of solving agree with each other and the loop
    runs = {
        "g_jac": ode.integrate(stiff, backend(x0), tb, method=method, g_jac=stiff_jac),
        "g_jvp": ode.integrate(stiff, backend(x0), tb, method=method, g_jvp=stiff_jvp),
        "default": ode.integrate(stiff, backend(x0), tb, method=method),
    }
    ref = numpy_loop(stiff, x0, t, method)
    for name, sol in runs.items():
        assert sol.status is Status.CONVERGED, name
        assert sol.iterations <= 6, name
        assert rel_err(backend.back(sol.states), ref) <= tolerance("float64", L, 200), name
    assert abs(runs["g_jac"].iterations - runs["default"].iterations) <= 1


def test_quasi_mode_with_analytic_jacobian(rng):
    # the diagonal of the analytic blocks is used by mode="quasi"
    t = np.linspace(0.0, 3.0, 301)
    x0 = rng.uniform(-1, 1, 4)
    sol = ode.integrate(stiff, x0, t, method="rk4", g_jac=stiff_jac, mode="quasi")
    assert sol.status is Status.CONVERGED
    assert rel_err(sol.states, numpy_loop(stiff, x0, t, "rk4")) <= tolerance("float64", 300,
                                                                            200)


def test_gradient_wrt_x0_matches_loop_torch(rng):
    torch = pytest.importorskip("torch")
    t = list(np.linspace(0.0, 1.0, 101))
    x0 = torch.tensor(rng.uniform(-1, 1, 2), requires_grad=True)
    ode.integrate(stiff, x0, t, method="rk4").states[-1].sum().backward()
    grad = x0.grad.clone()
    x0.grad = None
    ode.integrate_sequential(stiff, x0, t, method="rk4")[-1].sum().backward()
    torch.testing.assert_close(grad, x0.grad, rtol=1e-8, atol=1e-10)


# -- chaotic: honest non-convergence ------------------------------------------------------


# the failing iterates overflow; pcrsolve silences that for NumPy but array_api_strict
# arrays still warn (the iteration checks finiteness itself)
@pytest.mark.filterwarnings("ignore:(overflow|invalid value):RuntimeWarning")
@pytest.mark.parametrize("dtype", ["float64", "float32"])
def test_lorenz_reports_nonconvergence(backend, dtype):
    L, h = 800, 0.01  # t in [0, 8]: ~7 Lyapunov times (lambda_max ~ 0.9)
    t = np.arange(L + 1) * h
    x0 = np.array([1.0, 1.0, 1.0])
    args = (lorenz, backend(x0, dtype), list(t))
    opts = dict(method="rk4", g_jac=lorenz_jac, max_iter=10)
    sol = ode.integrate(*args, throw=False, **opts)
    assert not sol.converged
    assert sol.status in (Status.MAX_ITER, Status.DIVERGED, Status.NONFINITE)
    assert sol.iterations <= 10
    with pytest.raises(ConvergenceError) as info:
        ode.integrate(*args, **opts)
    assert info.value.solution.status is sol.status
    rescued = ode.integrate(*args, fallback=True, **opts)
    assert rescued.status is Status.FALLBACK and rescued.converged
    assert rescued.fallback_reason is sol.status
    loop = ode.integrate_sequential(*args, method="rk4")
    # the fallback is the same loop: identical up to the order of float operations
    np.testing.assert_allclose(backend.back(rescued.states), backend.back(loop),
                               rtol=0, atol=0 if dtype == "float64" else 1e-3)
    # and the float64 loop is a faithful RK4 integration
    if dtype == "float64":
        ref = numpy_loop(lorenz, x0, t, "rk4")
        assert rel_err(backend.back(loop), ref) <= 1e-9


# -- bad input ------------------------------------------------------------------------------


def _g(x, t):
    return -x


@pytest.mark.parametrize(
    ("t_grid", "match"),
    [
        (np.zeros((2, 3)), r"`t_grid` must be a 1-D"),
        (np.array([0.0]), r"`t_grid` must hold at least 2"),
        ([0.0], r"`t_grid` must hold at least 2"),
        (np.array([0.0, 1.0, 1.0]), r"`t_grid` must be strictly increasing"),
        (np.array([0.0, 2.0, 1.0]), r"`t_grid` must be strictly increasing; t\[2\]"),
        ([0.0, 2.0, 1.0], r"`t_grid` must be finite and strictly increasing"),
        (np.array([0.0, np.nan]), r"`t_grid` holds NaN"),
        ([0.0, float("inf")], r"`t_grid` must be finite"),
        ("0 1", r"`t_grid` must be a 1-D array or a sequence"),
        (3.0, r"`t_grid` must be a 1-D array or a sequence"),
        ([[0.0, 1.0]], r"`t_grid` must be a flat sequence"),
        (np.array([0, 1j]), r"`t_grid` must have a real numeric dtype"),
    ],
)
def test_bad_time_grid(t_grid, match):
    with pytest.raises(InputError, match=match):
        ode.integrate(_g, np.ones(2), t_grid)
    with pytest.raises(InputError, match=match):
        ode.euler_step(_g, t_grid)


def test_bad_time_grid_other_backends(backend):
    with pytest.raises(InputError, match="strictly increasing"):
        ode.integrate(_g, backend(np.ones(2)), backend(np.array([0.0, 1.0, 0.5])))
    with pytest.raises(InputError, match="at least 2"):
        ode.rk4_step(_g, backend(np.array([0.0])))


def test_integer_time_grid_is_accepted():
    sol = ode.integrate(_g, np.ones(1), np.arange(4), method="euler")
    np.testing.assert_allclose(sol.states[:, 0], [0.0, 0.0, 0.0])  # h = 1: x - x = 0


def test_bad_x0_and_functions():
    t = np.linspace(0.0, 1.0, 5)
    g3 = linear(A_LIN)[0]  # a 3-dimensional system
    with pytest.raises(InputError, match=r"`g` failed on `x0` of shape \(2,\).*width w = 2"):
        ode.integrate(g3, np.ones(2), t)
    with pytest.raises(InputError, match=r"`g` failed on `x0`"):
        ode.integrate_sequential(g3, np.ones(2), t)
    with pytest.raises(InputError, match=r"`x0` must have shape \(\.\.\., w\)"):
        ode.integrate(_g, np.float64(1.0) * np.ones(()), t)
    with pytest.raises(InputError, match=r"`x0` must have shape"):
        ode.integrate(_g, np.ones((2, 0)), t)
    with pytest.raises(InputError, match=r"`g` returned shape \(1, 1\).*expected \(1, 2\)"):
        ode.integrate(lambda x, t: x[..., :1], np.ones(2), t)
    with pytest.raises(InputError, match=r"`g_jac` returned shape"):
        ode.integrate(g3, np.ones(3), t, g_jac=lambda x, t: x)
    with pytest.raises(InputError, match=r"`g_jvp` returned shape"):
        ode.integrate(g3, np.ones(3), t, g_jvp=lambda x, t, v: v[..., :2])
    with pytest.raises(InputError, match=r"`x0` must be an array"):
        ode.integrate(_g, [1.0, 2.0], t)
    with pytest.raises(InputError, match=r"`x0` must have a real floating dtype"):
        ode.integrate(_g, np.ones(2, dtype=np.int64), t)


def test_bad_method_and_options():
    t = np.linspace(0.0, 1.0, 5)
    with pytest.raises(InputError, match=r"`method` must be one of \('euler', 'rk4'\)"):
        ode.integrate(_g, np.ones(2), t, method="rk45")
    with pytest.raises(InputError, match=r"`method`"):
        ode.recurrence(_g, t, method="midpoint")
    with pytest.raises(InputError, match=r"`g` must be callable"):
        ode.integrate(None, np.ones(2), t)
    with pytest.raises(InputError, match=r"`g_jac` must be callable"):
        ode.integrate(_g, np.ones(2), t, g_jac=np.eye(2))
    with pytest.raises(InputError, match=r"`jacobian` cannot be passed.*`g_jac`"):
        ode.integrate(_g, np.ones(2), t, jacobian=lambda x, l: x)
    with pytest.raises(InputError, match=r"`mode`"):  # forwarded options are checked too
        ode.integrate(_g, np.ones(2), t, mode="bogus")


def test_time_grid_from_another_library():
    torch = pytest.importorskip("torch")
    # a NumPy grid is converted to the states' library
    sol = ode.integrate(_g, torch.ones(2, dtype=torch.float64), np.linspace(0, 1, 11),
                        method="rk4")
    assert isinstance(sol.states, torch.Tensor)
    np.testing.assert_allclose(sol.states[-1].numpy(), np.exp(-1.0), rtol=1e-5)


def test_solution_shape_and_recurrence_fields():
    t = np.linspace(0.0, 1.0, 11)
    rec = ode.recurrence(_g, t, method="rk4")
    assert rec.length == 10 and rec.method == "rk4" and rec.solve_kwargs() == {}
    tk, hk = rec.times(np.ones(1, dtype=np.float32))
    assert tk.shape == (10,) and hk.dtype == np.float32
    np.testing.assert_allclose(hk, 0.1, rtol=1e-6)
    sol = ode.integrate(_g, np.ones((4, 2, 3)), t, method="rk4")
    assert sol.states.shape == (4, 2, 10, 3)
    ref = pcrsolve.solve(rec.step, np.ones((4, 2, 3)), 10, mode="sequential").states
    np.testing.assert_allclose(sol.states, ref, rtol=1e-12, atol=1e-14)
