"""Bad input gets an exception that names the argument and what was expected."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest

import pcrsolve


def _ok(L=4, w=3):
    return np.zeros((L, w, w)), np.zeros((L, w)), np.zeros(w)


def test_wrong_shape_of_A_names_it_and_suggests_structure():
    with pytest.raises(pcrsolve.InvalidSystemError, match=r"`A`.*\(\.\.\., 4, 3, 3\).*"
                       r"got shape \(4, 3\).*structure='diagonal'"):
        pcrsolve.BidiagonalSystem(np.zeros((4, 3)), np.zeros((4, 3)))


@pytest.mark.parametrize("bad_b", [np.zeros(3), np.zeros((4, 0))])
def test_wrong_shape_of_b(bad_b):
    with pytest.raises(pcrsolve.InvalidSystemError, match="`b`"):
        pcrsolve.BidiagonalSystem(np.zeros((4, 3, 3)), bad_b)


def test_wrong_shape_of_x0():
    A, b, _ = _ok()
    with pytest.raises(pcrsolve.InvalidSystemError, match=r"`x0`.*\(\.\.\., 3\).*\(5,\)"):
        pcrsolve.BidiagonalSystem(A, b, np.zeros(5))


def test_length_mismatch_between_A_and_b():
    with pytest.raises(pcrsolve.InvalidSystemError, match=r"L=4"):
        pcrsolve.BidiagonalSystem(np.zeros((5, 3, 3)), np.zeros((4, 3)))


def test_batch_dims_that_do_not_broadcast():
    with pytest.raises(pcrsolve.InvalidSystemError, match=r"`b`.*\(3,\).*`A`"):
        pcrsolve.BidiagonalSystem(np.zeros((2, 4, 3, 3)), np.zeros((3, 4, 3)))


@pytest.mark.parametrize("name", ["A", "b", "x0"])
@pytest.mark.parametrize("dtype", [np.int64, np.bool_, np.complex128])
def test_non_real_float_dtypes(name, dtype):
    args = dict(zip(["A", "b", "x0"], _ok(), strict=True))
    args[name] = args[name].astype(dtype)
    pattern = rf"`{name}`.*real floating dtype.*{dtype.__name__}"
    with pytest.raises(pcrsolve.InputError, match=pattern):
        pcrsolve.BidiagonalSystem(args["A"], args["b"], args["x0"])


@pytest.mark.parametrize("name", ["A", "b", "x0"])
@pytest.mark.parametrize("value", [np.nan, np.inf, -np.inf])
def test_non_finite_inputs(name, value):
    args = dict(zip(["A", "b", "x0"], _ok(), strict=True))
    args[name] = args[name].copy()
    args[name].flat[1] = value
    with pytest.raises(pcrsolve.NonFiniteError, match=rf"`{name}` holds 1 NaN or Inf"):
        pcrsolve.BidiagonalSystem(args["A"], args["b"], args["x0"])
    # opting out is explicit, and then the value propagates rather than vanishing
    system = pcrsolve.BidiagonalSystem(args["A"], args["b"], args["x0"], check_finite=False)
    with np.errstate(invalid="ignore"):
        assert not np.all(np.isfinite(pcrsolve.solve_linear(system, method="sequential")))


def test_not_an_array():
    with pytest.raises(pcrsolve.InputError, match=r"`b` must be an array.*list"):
        pcrsolve.BidiagonalSystem(np.zeros((2, 1, 1)), [[1.0], [2.0]])


def test_mixed_libraries_name_both_arguments():
    torch = pytest.importorskip("torch")
    A, b, x0 = _ok()
    with pytest.raises(pcrsolve.BackendMismatchError, match=r"`A` is .*torch.*`b` is .*numpy"):
        pcrsolve.BidiagonalSystem(torch.as_tensor(A), b, x0)
    with pytest.raises(TypeError):  # also a TypeError, for callers that catch that
        pcrsolve.BidiagonalSystem(A, b, torch.as_tensor(x0))


def test_mixed_devices_name_both_arguments():
    torch = pytest.importorskip("torch")
    if not torch.cuda.is_available():
        pytest.skip("needs a CUDA device")
    A, b, x0 = (torch.as_tensor(a) for a in _ok())
    with pytest.raises(pcrsolve.BackendMismatchError, match=r"`A` is on cpu but `b` is on cuda"):
        pcrsolve.BidiagonalSystem(A, b.cuda(), x0)


def test_unknown_structure_and_method():
    A, b, x0 = _ok()
    with pytest.raises(pcrsolve.InvalidSystemError, match=r"`structure`.*'banded'"):
        pcrsolve.BidiagonalSystem(A, b, structure="banded")
    system = pcrsolve.BidiagonalSystem(A, b, x0)
    with pytest.raises(pcrsolve.InputError, match=r"`method`.*'fast'"):
        pcrsolve.solve_linear(system, method="fast")
    with pytest.raises(pcrsolve.InputError, match=r"`chunk_size`"):
        pcrsolve.solve_linear(system, method="chunked", chunk_size=0)
    with pytest.raises(pcrsolve.InputError, match=r"`chunk_size` applies only"):
        pcrsolve.solve_linear(system, method="cr", chunk_size=4)
    with pytest.raises(pcrsolve.InputError, match=r"`system` must be a pcrsolve"):
        pcrsolve.solve_linear((A, b))


def test_length_zero_and_one_are_valid_systems():
    for L in (0, 1):
        system = pcrsolve.BidiagonalSystem(*_ok(L=L))
        assert system.length == L
        assert pcrsolve.solve_linear(system).shape == (L, 3)


def test_many_and_large_batch_dims(rng):
    # 6 batch dims, and a batch of 20 000 chains: shapes are carried, not flattened wrongly
    A = rng.uniform(-0.9, 0.9, (1, 2, 1, 3, 1, 2, 7))
    b = rng.standard_normal((2, 1, 1, 3, 2, 1, 7, 2))
    x = pcrsolve.solve_linear(pcrsolve.BidiagonalSystem(A, b, structure="scalar"), method="cr")
    assert x.shape == (2, 2, 1, 3, 2, 2, 7, 2)
    big = pcrsolve.BidiagonalSystem(rng.uniform(-0.9, 0.9, (20_000, 33)),
                                    rng.standard_normal((20_000, 33, 1)), structure="scalar")
    x = pcrsolve.solve_linear(big, method="pcr")
    y = pcrsolve.solve_linear(big, method="sequential")
    np.testing.assert_allclose(x, y, rtol=1e-12, atol=1e-12)


def test_to_dense_refuses_large_systems():
    system = pcrsolve.BidiagonalSystem(np.zeros(30_000), np.zeros((30_000, 1)),
                                       structure="scalar")
    with pytest.raises(pcrsolve.InvalidSystemError, match="to_dense"):
        system.to_dense()


def test_importing_and_solving_with_numpy_imports_no_gpu_library():
    code = (
        "import sys, numpy as np, pcrsolve\n"
        "s = pcrsolve.BidiagonalSystem(np.ones((8, 2)) * 0.5, np.ones((8, 2)), "
        "structure='diagonal')\n"
        "for m in ('auto', 'sequential', 'pcr', 'cr', 'chunked'):\n"
        "    pcrsolve.solve_linear(s, method=m)\n"
        "bad = [m for m in ('torch', 'cupy', 'jax') if m in sys.modules]\n"
        "assert not bad, bad\n"
        "print('clean')\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=False)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "clean"


def test_missing_arrays_and_transpose_rhs_and_chunk_size_forms():
    A, b, x0 = _ok()
    with pytest.raises(pcrsolve.InvalidSystemError, match="`A` is required"):
        pcrsolve.BidiagonalSystem(None, b)
    with pytest.raises(pcrsolve.InvalidSystemError, match="`b` is required"):
        pcrsolve.BidiagonalSystem(A, None)
    system = pcrsolve.BidiagonalSystem(A, b, x0)
    with pytest.raises(pcrsolve.InvalidSystemError, match=r"`b` of the transposed.*\(4, 5\)"):
        system.transpose(np.zeros((4, 5)))
    with pytest.raises(pcrsolve.InputError, match=r"pass method='chunked'.*'auto'"):
        pcrsolve.solve_linear(system, chunk_size=2)
    x = pcrsolve.solve_linear(system, method="chunked", chunk_size=np.int64(2))
    assert x.shape == (4, 3)


# -- step functions written one step at a time ---------------------------------------------
def _one_step_problem(rng, L=64, w=4):
    """Weights of a tanh recurrence, the one-step function a newcomer writes, the loop."""
    W = rng.standard_normal((L, w, w)) / (2 * np.sqrt(w))
    x0 = rng.standard_normal(w)

    def reference(x):
        out = []
        for l in range(L):
            x = np.tanh(W[l] @ x)
            out.append(x)
        return np.stack(out)

    return W, x0, reference(x0)


def _assert_solves(states, ref):
    """Within ten times Newton's default tolerance of the loop (the states are O(1))."""
    tol = 10 * pcrsolve.default_tolerance(np.float64, np)
    np.testing.assert_allclose(states, ref, rtol=0, atol=tol)


_ENTRY_POINTS = {
    "solve": lambda step, x0, L: pcrsolve.solve(step, x0, L),
    "sequential": lambda step, x0, L: pcrsolve.solve(step, x0, L, mode="sequential"),
    "iterate": lambda step, x0, L: pcrsolve.iterate(step, x0, L, 3, mode="quasi"),
    "residual": lambda step, x0, L: pcrsolve.residual(
        step, x0, np.zeros((L, x0.shape[-1]), x0.dtype)),
}


@pytest.mark.parametrize("entry", sorted(_ENTRY_POINTS))
def test_one_step_function_is_explained_numpy(rng, entry):
    W, x0, _ = _one_step_problem(rng)
    with pytest.raises(pcrsolve.StepFunctionError,
                       match=r"`step` raised ValueError.*one-step-at-a-time function.*"
                       r"vectorized over steps.*\(\.\.\., n, w\).*vectorize_step") as info:
        _ENTRY_POINTS[entry](lambda h, l: np.tanh(W[l] @ h), x0, 64)
    assert isinstance(info.value.__cause__, ValueError)  # the original error, chained


@pytest.mark.parametrize("grad", [False, True], ids=["no-grad", "params"])
def test_one_step_function_is_explained_torch(rng, grad):
    torch = pytest.importorskip("torch")
    W, x0, ref = _one_step_problem(rng)
    Ws = torch.tensor(W, requires_grad=grad)
    one = lambda h, l: torch.tanh(Ws[l] @ h)  # noqa: E731 - the newcomer's one-liner
    with pytest.raises(pcrsolve.StepFunctionError,
                       match=r"`step` raised RuntimeError.*mat1 and mat2.*"
                       r"one-step-at-a-time.*vectorize_step") as info:
        pcrsolve.solve(one, torch.tensor(x0), 64, params=[Ws] if grad else None)
    assert isinstance(info.value.__cause__, RuntimeError)
    # the advice works: wrapped, the same function gives the loop's states
    sol = pcrsolve.solve(pcrsolve.vectorize_step(one), torch.tensor(x0), 64,
                         params=[Ws] if grad else None)
    _assert_solves(sol.states.detach().numpy(), ref)


def test_vectorize_step_fixes_the_numpy_one_step_function(rng):
    W, x0, ref = _one_step_problem(rng)
    sol = pcrsolve.solve(pcrsolve.vectorize_step(lambda h, l: np.tanh(W[l] @ h)), x0, 64)
    _assert_solves(sol.states, ref)


def test_one_step_function_returning_the_wrong_shape_is_explained(rng):
    # h @ W[l] runs vectorized too, but broadcasts to (n, n, w)
    W, x0, _ = _one_step_problem(rng)
    with pytest.raises(pcrsolve.StepFunctionError,
                       match=r"`step` must return shape \(64, 4\) for these inputs; got "
                       r"\(64, 64, 4\).*one-step-at-a-time.*vectorize_step"):
        pcrsolve.solve(lambda h, l: np.tanh(h @ W[l]), x0, 64)


def test_vectorized_step_with_a_bug_of_its_own_keeps_its_exception(rng):
    # not a calling-convention problem: the user's own exception, with a note on the convention
    _, x0, _ = _one_step_problem(rng)

    def step(x, l):
        raise KeyError("my own bug")

    with pytest.raises(KeyError, match="my own bug") as info:
        pcrsolve.solve(step, x0, 64)
    notes = " ".join(getattr(info.value, "__notes__", []))
    assert "vectorized over steps" in notes and "vectorize_step" in notes


def test_step_that_does_not_broadcast_batch_dims_is_explained(rng):
    # vectorized over steps but not over leading dims: finite differences add one
    W, x0, ref = _one_step_problem(rng)

    def step(x, l):
        return np.tanh(np.einsum("nij,nj->ni", W[l], x))

    with pytest.raises(pcrsolve.StepFunctionError,
                       match=r"`step` raised ValueError.*extra leading batch axis.*"
                       r"\(\.\.\., n, w\).*'\.\.\.nj'") as info:
        pcrsolve.solve(step, x0, 64)
    assert isinstance(info.value.__cause__, ValueError)

    # with a Jacobian given, no batched call is needed and the solve succeeds
    def jac(x, l):
        return (1 - step(x, l)[..., None] ** 2) * W[l]

    sol = pcrsolve.solve(step, x0, 64, jacobian=jac)
    _assert_solves(sol.states, ref)
