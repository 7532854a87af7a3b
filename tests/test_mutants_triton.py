"""The Triton scan's host-side plan against its documented rules, and the scan on every width.

Kills host-code mutants of ``scripts/mutation.py`` in ``backends/triton_scan.py``: the
tile holds ``_TILE_ELEMENTS`` (2048) elements in float32 and half as many in float64, is
a power of two of at least 16 steps and no longer than ``L`` rounded up; a plan's steps
per chunk is positive (the caller divides by it). Runs under the Triton interpreter on a
CPU (sizes small).
"""

from __future__ import annotations

import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("triton")

from pcrsolve.backends.triton_scan import diagonal_scan, plan  # noqa: E402

CPU = torch.device("cpu")


def pow2(n: int) -> bool:
    return n > 0 and n & (n - 1) == 0


@pytest.mark.parametrize("acc64", [False, True])
@pytest.mark.parametrize("W", [1, 8, 20, 64, 256])
@pytest.mark.parametrize("L", [1, 16, 100, 10_000])
def test_tile_follows_the_documented_budget(acc64, W, L):
    n_chain = 64  # enough programs: one pass, feature blocks as wide as they go
    bw, tile, per_chunk = plan(n_chain, L, W, acc64, CPU)
    budget = 2048 // (2 if acc64 else 1)
    assert (pow2(bw) and 8 <= bw <= 64) or (W < 8 and pow2(bw))
    assert pow2(tile) and tile >= 16
    assert tile == min(max(16, budget // bw), max(16, 1 << max(L - 1, 0).bit_length()))
    assert per_chunk >= max(L, 1)


def test_plan_of_an_empty_chain_has_a_positive_chunk():
    for acc64 in (False, True):
        assert plan(1, 0, 4, acc64, CPU)[2] >= 1
        assert plan(64, 0, 4, acc64, CPU)[2] >= 1


@pytest.mark.parametrize("scalar", [False, True])
@pytest.mark.parametrize("reverse", [False, True])
def test_float64_scan_over_tiles_matches_loop(rng, scalar, reverse):
    # float64 accumulation with 8-feature blocks: the tile then holds 128 steps
    L, w = 300, 8
    A = rng.uniform(-0.95, 0.95, (2, L) if scalar else (2, L, w))
    b, x0 = rng.standard_normal((2, L, w)), rng.standard_normal((2, w))
    x = diagonal_scan(torch.as_tensor(A), torch.as_tensor(b), torch.as_tensor(x0),
                      scalar=scalar, reverse=reverse).numpy()
    Af = A[..., None] if scalar else A
    ref = np.empty_like(b)
    s = x0.copy()
    for l in (range(L - 1, -1, -1) if reverse else range(L)):
        s = Af[:, l] * s + b[:, l]
        ref[:, l] = s
    np.testing.assert_allclose(x, ref, rtol=1e-12, atol=1e-12)
