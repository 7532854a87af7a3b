"""Tests that kill surviving mutants of ``scripts/mutation.py`` in ``pcrsolve/system.py``.

The residual and the neighbours of a candidate whose batch is larger than the system's
(``x`` of shape ``(..., L, w)``: its batch broadcasts against the system's), in both
directions, against a reference written here.
"""

from __future__ import annotations

import numpy as np
import pytest

import pcrsolve


def blocks(rng, structure, batch, L, w):
    shape = {"dense": (*batch, L, w, w), "diagonal": (*batch, L, w),
             "scalar": (*batch, L)}[structure]
    return 0.5 * rng.standard_normal(shape)


def apply_f64(A, x, structure):
    if structure == "dense":
        return np.einsum("...lij,...lj->...li", A, x)
    if structure == "diagonal":
        return A * x
    return A[..., None] * x


def reference(A, b, x0, x, structure, reverse):
    """``x_l - A_l x_{l-/+1} - b_l`` with ``x0`` at the boundary; batches broadcast."""
    batch = np.broadcast_shapes(x.shape[:-2], b.shape[:-2], x0.shape[:-1])
    x = np.broadcast_to(x, (*batch, *x.shape[-2:]))
    edge = np.broadcast_to(x0, (*batch, x.shape[-1]))[..., None, :]
    if reverse:
        nb = np.concatenate([x[..., 1:, :], edge], axis=-2)
    else:
        nb = np.concatenate([edge, x[..., :-1, :]], axis=-2)
    return nb, x - apply_f64(A, nb, structure) - b


@pytest.mark.parametrize("structure", ["dense", "diagonal", "scalar"])
@pytest.mark.parametrize("reverse", [False, True])
@pytest.mark.parametrize("sys_batch,x_batch", [((), (3,)), ((), (2, 3)), ((3,), (2, 1))])
def test_residual_of_a_candidate_with_a_larger_batch(backend, rng, structure, reverse,
                                                     sys_batch, x_batch):
    L, w = 5, 2
    A = blocks(rng, structure, sys_batch, L, w)
    b = rng.standard_normal((*sys_batch, L, w))
    x0 = rng.standard_normal((*sys_batch, w))
    x = rng.standard_normal((*x_batch, L, w))
    s = pcrsolve.BidiagonalSystem(backend(A), backend(b), backend(x0), structure=structure,
                                  reverse=reverse)
    nb, res = reference(A, b, x0, x, structure, reverse)
    got_nb = backend.back(s.neighbours(backend(x)))
    assert got_nb.shape == nb.shape
    np.testing.assert_array_equal(got_nb, nb)
    got = backend.back(s.residual(backend(x)))
    assert got.shape == res.shape
    np.testing.assert_allclose(got, res, rtol=1e-13, atol=1e-13)


def test_transpose_does_not_check_finiteness_again(rng):
    # the transposed system reuses arrays the caller already checked (or chose not to):
    # building it costs no pass over the data, and a system built with check_finite=False
    # can still be transposed and solved (its NaN propagates into the answer, not an error)
    L, w = 6, 2
    A = 0.5 * rng.standard_normal((L, w))
    A[2, 1] = np.nan
    b = rng.standard_normal((L, w))
    s = pcrsolve.BidiagonalSystem(A, b, structure="diagonal", check_finite=False)
    t = s.transpose()
    y = pcrsolve.solve_linear(t, method="sequential")
    assert np.isnan(y[:2, 1]).all() and np.isfinite(y[2:]).all()
    finite = pcrsolve.BidiagonalSystem(np.nan_to_num(A), b, structure="diagonal")
    np.testing.assert_array_equal(y[2:], pcrsolve.solve_linear(finite.transpose(),
                                                               method="sequential")[2:])
