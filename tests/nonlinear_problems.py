"""Test recurrences written once against the Array API, with NumPy float64 references.

Each problem gives its parameters as NumPy float64 arrays; ``make_step(params, xp)``
returns a vectorized ``step(x_prev, l)`` for any namespace, and ``reference(x0)`` runs the
recurrence in a plain NumPy float64 loop written independently of pcrsolve.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import array_api_compat
import numpy as np


def _take(a: Any, l: Any) -> Any:
    xp = array_api_compat.array_namespace(a)
    return xp.take(a, l, axis=0)


def _matvec(M: Any, x: Any) -> Any:
    xp = array_api_compat.array_namespace(M, x)
    return xp.matmul(M, x[..., None])[..., 0]


@dataclass
class Problem:
    name: str
    params: dict[str, np.ndarray]
    make_step: Callable[[dict[str, Any]], Callable[[Any, Any], Any]]
    ref_step: Callable[[dict[str, np.ndarray], np.ndarray, int], np.ndarray]
    L: int
    w: int

    def step_for(self, convert: Callable[[np.ndarray], Any]) -> Callable[[Any, Any], Any]:
        return self.make_step({k: convert(v) for k, v in self.params.items()})

    def reference(self, x0: np.ndarray) -> np.ndarray:
        x = np.asarray(x0, np.float64)
        out = []
        for l in range(self.L):
            x = self.ref_step(self.params, x, l)
            out.append(x)
        return np.stack(out, axis=-2)


def tanh_mlp(rng: np.random.Generator, L: int = 48, w: int = 4, gain: float = 1.0) -> Problem:
    """``x_l = tanh(W_l x_{l-1} + b_l)``, weights ~ N(0, gain^2/w)."""
    params = {"W": gain * rng.standard_normal((L, w, w)) / np.sqrt(w),
              "b": 0.5 * rng.standard_normal((L, w))}

    def make(p):
        def step(x, l):
            xp = array_api_compat.array_namespace(x)
            return xp.tanh(_matvec(_take(p["W"], l), x) + _take(p["b"], l))
        return step

    return Problem("tanh_mlp", params, make,
                   lambda p, x, l: np.tanh(x @ p["W"][l].T + p["b"][l]), L, w)


def residual_stack(rng: np.random.Generator, L: int = 48, w: int = 4) -> Problem:
    """``x_l = x_{l-1} + 0.2 tanh(W_l x_{l-1} + b_l)`` (a ResNet's blocks)."""
    params = {"W": rng.standard_normal((L, w, w)) / np.sqrt(w),
              "b": 0.5 * rng.standard_normal((L, w))}

    def make(p):
        def step(x, l):
            xp = array_api_compat.array_namespace(x)
            return x + 0.2 * xp.tanh(_matvec(_take(p["W"], l), x) + _take(p["b"], l))
        return step

    return Problem("residual", params, make,
                   lambda p, x, l: x + 0.2 * np.tanh(x @ p["W"][l].T + p["b"][l]), L, w)


def gru_like(rng: np.random.Generator, L: int = 48, w: int = 3) -> Problem:
    """A gated cell with per-step input folded into the biases (an RNN over time)."""
    params = {"U": rng.standard_normal((w, w)) / np.sqrt(w),
              "V": rng.standard_normal((w, w)) / np.sqrt(w),
              "bu": rng.standard_normal((L, w)), "bv": rng.standard_normal((L, w))}

    def make(p):
        def step(x, l):
            xp = array_api_compat.array_namespace(x)
            z = 1.0 / (1.0 + xp.exp(-(_matvec(p["V"], x) + _take(p["bv"], l))))
            return (1.0 - z) * x + z * xp.tanh(_matvec(p["U"], x) + _take(p["bu"], l))
        return step

    def ref(p, x, l):
        z = 1.0 / (1.0 + np.exp(-(x @ p["V"].T + p["bv"][l])))
        return (1.0 - z) * x + z * np.tanh(x @ p["U"].T + p["bu"][l])

    return Problem("gru_like", params, make, ref, L, w)


def logistic(r: float, L: int = 64) -> Problem:
    """The logistic map ``x_l = r x_{l-1} (1 - x_{l-1})`` (contracting for r < 3)."""
    params = {"r": np.full((1,), r)}

    def make(p):
        def step(x, l):
            return p["r"] * x * (1.0 - x)
        return step

    return Problem(f"logistic(r={r})", params, make,
                   lambda p, x, l: p["r"] * x * (1.0 - x), L, 1)


CONTRACTING = {"tanh_mlp": tanh_mlp, "residual": residual_stack, "gru_like": gru_like}
