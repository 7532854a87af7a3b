"""The sequential contenders every pcrsolve speed-up is measured against.

A speed-up is only as honest as its baseline. For one problem this module builds every
sequential implementation that this machine can run, each a named callable:

* a *lean loop*: plain Python floats where the state is tiny (width 1, a few chains; the
  list conversion is timed), otherwise one in-place NumPy ufunc per step into a
  preallocated output;
* a *numba* ``@njit`` loop, when numba is importable (compiled by the warm-up run, which
  is not timed);
* ``jax.lax.scan`` under ``jax.jit``, when jax is importable (compiled by the warm-up run);
* for torch and CuPy arrays, the eager per-step loop in that library (torch: fused
  ``addcmul``/``baddbmm`` per step, preallocated output).

CPU contenders (float loop, numba) run whatever the workspace's library and device: they
are what a user of that machine can write (for a GPU workspace they read host copies of
the inputs, made before timing). Every contender's output is
checked against an independent float64 loop (:func:`linear_reference`,
:func:`mlp_reference`); the suites time them all and take the fastest as the reference
of the speed-up column.

Problems come as NumPy float64 arrays with one batch axis (``B`` chains):

* linear: ``A`` of shape ``(B, L, w, w)`` / ``(B, L, w)`` / ``(B, L)``, ``b`` ``(B, L, w)``,
  ``x0`` ``(B, w)``; ``reverse=True`` runs ``x_l = A_l x_{l+1} + b_l`` from ``l = L``;
* tanh MLP: ``W`` ``(L, w, w)``, ``c`` ``(L, w)``, ``x0`` ``(B, w)``,
  ``x_l = tanh(W_l x_{l-1} + c_l)``.

Every contender returns the states as ``(B, L, w)`` in its own library; ``to_numpy``
brings them back as float64.
"""

from __future__ import annotations

import importlib.util
import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np

from .harness import Workspace

__all__ = [
    "FLOAT_LOOP_MAX_CHAINS",
    "FLOOR_NAME",
    "Baseline",
    "adjoint_baselines",
    "available",
    "linear_baselines",
    "linear_reference",
    "logistic_baselines",
    "logistic_reference",
    "memory_floor",
    "mlp_baselines",
    "mlp_reference",
]

#: The float loop is a contender for width-1 states of at most this many chains.
FLOAT_LOOP_MAX_CHAINS = 4

COMPILE_NOTE = "compile time excluded (untimed warm-up run)"


@dataclass
class Baseline:
    """One sequential contender.

    Attributes
    ----------
    name : str
        What the output tables call it, e.g. ``"numba @njit loop"``.
    run : callable
        ``run() -> states``, the timed call.
    to_numpy : callable
        ``to_numpy(states) -> np.ndarray`` (float64).
    note : str
        What is (not) timed, in a few words.
    """

    name: str
    run: Callable[[], Any]
    to_numpy: Callable[[Any], np.ndarray]
    note: str = ""


def available(module: str) -> bool:
    """Whether ``module`` can be imported (without importing it)."""
    return importlib.util.find_spec(module) is not None


def _f64(x: Any) -> np.ndarray:
    return np.asarray(x, dtype=np.float64)


# -- linear recurrences ---------------------------------------------------------------------


def _check_linear(A: np.ndarray, b: np.ndarray, x0: np.ndarray, structure: str) -> None:
    nblock = {"dense": 2, "diagonal": 1, "scalar": 0}.get(structure)
    if nblock is None:
        raise ValueError(f"`structure` must be 'dense', 'diagonal' or 'scalar'; got {structure!r}")
    if b.ndim != 3:
        raise ValueError(f"`b` must have shape (B, L, w); got {b.shape}")
    B, L, w = b.shape
    want = (B, L, *((w, w)[:nblock]))
    if A.shape != want:
        raise ValueError(f"`A` must have shape {want} for structure {structure!r}; got {A.shape}")
    if x0.shape != (B, w):
        raise ValueError(f"`x0` must have shape {(B, w)}; got {x0.shape}")


def _float_linear(A: np.ndarray, b: np.ndarray, x0: np.ndarray,
                  reverse: bool) -> Callable[[], np.ndarray]:
    """Width-1 chains on Python floats (``tolist`` timed), one chain after the other."""
    B, L, _ = b.shape

    def run() -> np.ndarray:
        out = np.empty((B, L, 1))
        for i in range(B):
            a, c = A[i].reshape(L).tolist(), b[i].reshape(L).tolist()
            if reverse:
                a.reverse()
                c.reverse()
            x, xs = float(x0[i, 0]), []
            append = xs.append
            for al, bl in zip(a, c, strict=True):
                x = al * x + bl
                append(x)
            if reverse:
                xs.reverse()
            out[i, :, 0] = xs
        return out

    return run


def _numpy_linear(A: np.ndarray, b: np.ndarray, x0: np.ndarray, structure: str,
                  reverse: bool) -> Callable[[], np.ndarray]:
    """One in-place ufunc per step into a preallocated step-major output."""
    B, L, w = b.shape

    def run() -> np.ndarray:
        steps = np.ascontiguousarray(np.moveaxis(A, 1, 0))  # (L, B, ...)
        if structure == "scalar":
            steps = steps[..., None]
        rhs = np.ascontiguousarray(np.moveaxis(b, 1, 0))
        out = np.empty((L, B, w), dtype=b.dtype)
        order = range(L - 1, -1, -1) if reverse else range(L)
        x = x0
        for l in order:
            o = out[l]
            if structure == "dense":
                np.vecdot(steps[l], x[:, None, :], out=o)
            else:
                np.multiply(steps[l], x, out=o)
            np.add(o, rhs[l], out=o)
            x = o
        return np.moveaxis(out, 0, 1)

    return run


_NUMBA: dict[str, Any] = {}


def _numba_linear_kernel(structure: str) -> Any:
    """The jitted loop for ``structure`` (compiled lazily, once per process and dtype).

    ``fastmath=True``: the fastest loop a user gets from numba (fused multiply-adds halve
    the latency of a width-1 chain's step).
    """
    if structure in _NUMBA:
        return _NUMBA[structure]
    import numba

    if structure == "dense":
        @numba.njit(cache=False, fastmath=True)
        def kernel(A, b, x0, out, reverse):  # pragma: no cover - compiled
            B, L, w = b.shape
            for i in range(B):
                x = x0[i].copy()
                y = np.empty_like(x)
                for t in range(L):
                    l = L - 1 - t if reverse else t
                    for r in range(w):
                        s = b[i, l, r]
                        for c in range(w):
                            s += A[i, l, r, c] * x[c]
                        y[r] = s
                    for r in range(w):
                        x[r] = y[r]
                        out[i, l, r] = y[r]
    elif structure == "diagonal":
        @numba.njit(cache=False, fastmath=True)
        def kernel(A, b, x0, out, reverse):  # pragma: no cover - compiled
            # a width-1 chain keeps its state in a register; wider states run their w
            # independent chains in the inner loop (contiguous, vectorised), as one would
            # write it by hand: chain-by-chain loops stride through memory and are
            # latency-bound (measured 4.8x slower for B = 8, w = 16)
            B, L, w = b.shape
            for i in range(B):
                if w == 1:
                    x1 = x0[i, 0]
                    for t in range(L):
                        l = L - 1 - t if reverse else t
                        x1 = A[i, l, 0] * x1 + b[i, l, 0]
                        out[i, l, 0] = x1
                    continue
                x = x0[i].copy()
                for t in range(L):
                    l = L - 1 - t if reverse else t
                    for j in range(w):
                        x[j] = A[i, l, j] * x[j] + b[i, l, j]
                        out[i, l, j] = x[j]
    else:
        @numba.njit(cache=False, fastmath=True)
        def kernel(A, b, x0, out, reverse):  # pragma: no cover - compiled
            B, L, w = b.shape
            for i in range(B):
                if w == 1:
                    x1 = x0[i, 0]
                    for t in range(L):
                        l = L - 1 - t if reverse else t
                        x1 = A[i, l] * x1 + b[i, l, 0]
                        out[i, l, 0] = x1
                    continue
                x = x0[i].copy()
                for t in range(L):
                    l = L - 1 - t if reverse else t
                    a = A[i, l]
                    for j in range(w):
                        x[j] = a * x[j] + b[i, l, j]
                        out[i, l, j] = x[j]
    _NUMBA[structure] = kernel
    return kernel


def _numba_linear(A: np.ndarray, b: np.ndarray, x0: np.ndarray, structure: str,
                  reverse: bool) -> Callable[[], np.ndarray]:
    kernel = _numba_linear_kernel(structure)
    out = np.empty(b.shape, dtype=b.dtype)  # reused, as a lean loop would (no page faults)

    def run() -> np.ndarray:
        kernel(A, b, x0, out, reverse)
        return out

    return run


def _jax_setup(dtype: str) -> Any:
    import jax

    if dtype == "float64":
        jax.config.update("jax_enable_x64", True)
    return jax


def _jax_linear(A: np.ndarray, b: np.ndarray, x0: np.ndarray, structure: str, reverse: bool,
                dtype: str) -> Callable[[], Any]:
    jax = _jax_setup(dtype)
    jnp = jax.numpy

    def solve(A: Any, b: Any, x0: Any) -> Any:
        def body(x: Any, ab: Any) -> Any:
            a, c = ab
            if structure == "dense":
                x = jnp.einsum("bij,bj->bi", a, x) + c
            elif structure == "diagonal":
                x = a * x + c
            else:
                x = a[:, None] * x + c
            return x, x

        _, xs = jax.lax.scan(body, x0, (jnp.moveaxis(A, 1, 0), jnp.moveaxis(b, 1, 0)),
                             reverse=reverse)
        return jnp.moveaxis(xs, 0, 1)

    f = jax.jit(solve)
    args = tuple(jnp.asarray(a, dtype=dtype) for a in (A, b, x0))
    return lambda: f(*args).block_until_ready()


def _torch_linear(ws: Workspace, A: np.ndarray, b: np.ndarray, x0: np.ndarray, structure: str,
                  reverse: bool) -> Callable[[], Any]:
    import torch

    At, bt, xt = ws.asarray(A), ws.asarray(b), ws.asarray(x0)
    B, L, w = b.shape

    def run() -> Any:
        out = torch.empty(B, L, w, dtype=bt.dtype, device=bt.device)
        x = xt
        for l in (range(L - 1, -1, -1) if reverse else range(L)):
            if structure == "dense":
                x = torch.baddbmm(bt[:, l, :, None], At[:, l], x[..., None])[..., 0]
            elif structure == "diagonal":
                x = torch.addcmul(bt[:, l], At[:, l], x)
            else:
                x = torch.addcmul(bt[:, l], At[:, l, None], x)
            out[:, l] = x
        return out

    return run


def _eager_linear(ws: Workspace, A: np.ndarray, b: np.ndarray, x0: np.ndarray, structure: str,
                  reverse: bool) -> Callable[[], Any]:
    """The per-step loop in the workspace's library, written against the Array API."""
    xp = ws.xp
    At, bt, xt = ws.asarray(A), ws.asarray(b), ws.asarray(x0)
    L = b.shape[1]

    def run() -> Any:
        out = [None] * L
        x = xt
        for l in (range(L - 1, -1, -1) if reverse else range(L)):
            if structure == "dense":
                x = xp.vecdot(At[:, l, ...], x[:, None, :]) + bt[:, l, :]
            elif structure == "diagonal":
                x = At[:, l, :] * x + bt[:, l, :]
            else:
                x = At[:, l, None] * x + bt[:, l, :]
            out[l] = x
        return xp.stack(out, axis=1)

    return run


def linear_reference(A: np.ndarray, b: np.ndarray, x0: np.ndarray, structure: str,
                     reverse: bool = False) -> np.ndarray:
    """The float64 loop every contender is checked against.

    Parameters
    ----------
    A : np.ndarray, shape (B, L, w, w) / (B, L, w) / (B, L)
    b : np.ndarray, shape (B, L, w)
    x0 : np.ndarray, shape (B, w)
    structure : {"dense", "diagonal", "scalar"}
    reverse : bool

    Returns
    -------
    np.ndarray, shape (B, L, w), float64
    """
    _check_linear(A, b, x0, structure)
    A, b, x0 = _f64(A), _f64(b), _f64(x0)
    if b.shape[2] == 1:
        return _float_linear(A.reshape(b.shape[:2]), b, x0, reverse)()
    return np.ascontiguousarray(_numpy_linear(A, b, x0, structure, reverse)())


def linear_baselines(ws: Workspace, A: np.ndarray, b: np.ndarray, x0: np.ndarray,
                     structure: str, reverse: bool = False,
                     eager: bool = True) -> list[Baseline]:
    """Every sequential contender for ``x_l = A_l x_{l-1} + b_l`` on this machine.

    Parameters
    ----------
    ws : Workspace
        Library, device and dtype of the contenders (float loops are float64).
    A : np.ndarray, shape (B, L, w, w) / (B, L, w) / (B, L)
    b : np.ndarray, shape (B, L, w)
    x0 : np.ndarray, shape (B, w)
    structure : {"dense", "diagonal", "scalar"}
    reverse : bool
        Run ``x_l = A_l x_{l+1} + b_l`` from the last step down.
    eager : bool
        Include the per-step loop of a torch/CuPy workspace (leave it out where it would
        take minutes and cannot win, e.g. the demo's 2^20 steps).

    Returns
    -------
    list of Baseline
        In the order they should be printed; each ``run()`` returns ``(B, L, w)`` states.
    """
    _check_linear(A, b, x0, structure)
    B, L, w = b.shape
    out: list[Baseline] = []
    dt = np.dtype(ws.dtype_name)
    An, bn, xn = (np.ascontiguousarray(a, dtype=dt) for a in (A, b, x0))
    if w == 1 and B <= FLOAT_LOOP_MAX_CHAINS:
        out.append(Baseline("Python float loop", _float_linear(_f64(A).reshape(B, L), _f64(b),
                                                                _f64(x0), reverse),
                            _f64, "float64, list conversion timed"))
    elif ws.backend == "numpy":
        out.append(Baseline("NumPy loop (in-place)", _numpy_linear(An, bn, xn, structure,
                                                                   reverse),
                            _f64, "one ufunc per step, preallocated output"))
    if available("numba"):
        out.append(Baseline("numba @njit loop", _numba_linear(An, bn, xn, structure, reverse),
                            _f64, COMPILE_NOTE))
    if available("jax"):
        out.append(Baseline("jax.lax.scan (jit)", _jax_linear(An, bn, xn, structure, reverse,
                                                              ws.dtype_name),
                            _f64, COMPILE_NOTE))
    if ws.backend == "torch" and eager:
        out.append(Baseline("torch eager loop", _torch_linear(ws, A, b, x0, structure, reverse),
                            ws.to_numpy, "per step: one addcmul/baddbmm"))
    elif ws.backend != "numpy" and eager:
        out.append(Baseline(f"{ws.backend} eager loop", _eager_linear(ws, A, b, x0, structure,
                                                                     reverse),
                            ws.to_numpy, "per step: multiply-add"))
    return out


# -- the tanh MLP recurrence ----------------------------------------------------------------


def _check_mlp(W: np.ndarray, c: np.ndarray, x0: np.ndarray) -> None:
    if W.ndim != 3 or W.shape[1] != W.shape[2]:
        raise ValueError(f"`W` must have shape (L, w, w); got {W.shape}")
    L, w = W.shape[:2]
    if c.shape != (L, w):
        raise ValueError(f"`c` must have shape {(L, w)}; got {c.shape}")
    if x0.ndim != 2 or x0.shape[1] != w:
        raise ValueError(f"`x0` must have shape (B, {w}); got {x0.shape}")


def _numpy_mlp(W: np.ndarray, c: np.ndarray, x0: np.ndarray) -> Callable[[], np.ndarray]:
    """``x = tanh(x @ W_l^T + c_l)`` per step, in place into a preallocated output."""
    L, w = c.shape
    Wt = np.ascontiguousarray(np.swapaxes(W, 1, 2))

    def run() -> np.ndarray:
        out = np.empty((L, x0.shape[0], w), dtype=c.dtype)
        x = x0
        for Wl, cl, o in zip(Wt, c, out, strict=True):
            np.matmul(x, Wl, out=o)
            np.add(o, cl, out=o)
            np.tanh(o, out=o)
            x = o
        return np.moveaxis(out, 0, 1)

    return run


def _float_mlp(W: np.ndarray, c: np.ndarray, x0: np.ndarray) -> Callable[[], np.ndarray]:
    """Width 1: ``x = math.tanh(w_l x + c_l)`` on Python floats, chain after chain."""
    L = c.shape[0]

    def run() -> np.ndarray:
        out = np.empty((x0.shape[0], L, 1))
        wl, cl = W.reshape(L).tolist(), c.reshape(L).tolist()
        tanh = math.tanh
        for i in range(x0.shape[0]):
            x, xs = float(x0[i, 0]), []
            append = xs.append
            for a, d in zip(wl, cl, strict=True):
                x = tanh(a * x + d)
                append(x)
            out[i, :, 0] = xs
        return out

    return run


def _numba_mlp(W: np.ndarray, c: np.ndarray, x0: np.ndarray) -> Callable[[], np.ndarray]:
    if "mlp" not in _NUMBA:
        import numba

        @numba.njit(cache=False)
        def kernel(W, c, x0, out):  # pragma: no cover - compiled
            L, w = c.shape
            for i in range(x0.shape[0]):
                x = x0[i].copy()
                y = np.empty_like(x)
                for l in range(L):
                    for r in range(w):
                        s = c[l, r]
                        for k in range(w):
                            s += W[l, r, k] * x[k]
                        y[r] = np.tanh(s)
                    for r in range(w):
                        x[r] = y[r]
                        out[i, l, r] = y[r]

        _NUMBA["mlp"] = kernel
    kernel = _NUMBA["mlp"]

    def run() -> np.ndarray:
        out = np.empty((x0.shape[0], *c.shape), dtype=c.dtype)
        kernel(W, c, x0, out)
        return out

    return run


def _jax_mlp(W: np.ndarray, c: np.ndarray, x0: np.ndarray, dtype: str) -> Callable[[], Any]:
    jax = _jax_setup(dtype)
    jnp = jax.numpy

    def forward(W: Any, c: Any, x0: Any) -> Any:
        def body(x: Any, wc: Any) -> Any:
            Wl, cl = wc
            x = jnp.tanh(x @ Wl.T + cl)
            return x, x

        _, xs = jax.lax.scan(body, x0, (W, c))
        return jnp.moveaxis(xs, 0, 1)

    f = jax.jit(forward)
    args = tuple(jnp.asarray(a, dtype=dtype) for a in (W, c, x0))
    return lambda: f(*args).block_until_ready()


def _eager_mlp(ws: Workspace, W: np.ndarray, c: np.ndarray,
               x0: np.ndarray) -> Callable[[], Any]:
    from .newton import mlp_functions

    loop = mlp_functions(ws.asarray(W), ws.asarray(c))["loop"]
    xt = ws.asarray(x0)
    return lambda: loop(xt)


def mlp_reference(W: np.ndarray, c: np.ndarray, x0: np.ndarray) -> np.ndarray:
    """``x_l = tanh(W_l x_{l-1} + c_l)`` by a float64 NumPy loop; ``(B, L, w)``."""
    _check_mlp(W, c, x0)
    return np.ascontiguousarray(_numpy_mlp(_f64(W), _f64(c), _f64(x0))())


def mlp_baselines(ws: Workspace, W: np.ndarray, c: np.ndarray,
                  x0: np.ndarray) -> list[Baseline]:
    """Every sequential contender for the tanh MLP ``x_l = tanh(W_l x_{l-1} + c_l)``.

    Parameters
    ----------
    ws : Workspace
    W : np.ndarray, shape (L, w, w)
    c : np.ndarray, shape (L, w)
    x0 : np.ndarray, shape (B, w)

    Returns
    -------
    list of Baseline
        The eager loop in the workspace's library first (the loop a user writes first),
        then the float, numba and jax loops where they apply.
    """
    _check_mlp(W, c, x0)
    w = c.shape[1]
    dt = np.dtype(ws.dtype_name)
    Wn, cn, xn = (np.ascontiguousarray(a, dtype=dt) for a in (W, c, x0))
    out = [Baseline(f"{ws.backend} eager loop", _eager_mlp(ws, W, c, x0), ws.to_numpy,
                    "x = tanh(x @ W_l.T + c_l) per step")]
    if ws.backend == "numpy":
        out.append(Baseline("NumPy loop (in-place)", _numpy_mlp(Wn, cn, xn), _f64,
                            "matmul/add/tanh with out="))
    if w == 1 and x0.shape[0] <= FLOAT_LOOP_MAX_CHAINS:
        out.append(Baseline("Python math.tanh loop", _float_mlp(_f64(W), _f64(c), _f64(x0)),
                            _f64, "float64, list conversion timed"))
    if available("numba"):
        out.append(Baseline("numba @njit loop", _numba_mlp(Wn, cn, xn), _f64, COMPILE_NOTE))
    if available("jax"):
        out.append(Baseline("jax.lax.scan (jit)", _jax_mlp(Wn, cn, xn, ws.dtype_name), _f64,
                            COMPILE_NOTE))
    return out


# -- the backward pass of the tanh MLP (torch) -----------------------------------------------


def adjoint_baselines(ws: Workspace, W: Any, c: Any, x0: Any, weight: Any) -> list[Baseline]:
    """Sequential contenders for the gradient of ``sum(weight * states)`` w.r.t. ``W, c``.

    Parameters
    ----------
    ws : Workspace
        A torch workspace.
    W : torch.Tensor, shape (L, w, w), requires grad
    c : torch.Tensor, shape (L, w), requires grad
    x0 : torch.Tensor, shape (B, w)
    weight : torch.Tensor, shape (B, L, w)
        ``dloss/dstates``.

    Returns
    -------
    list of Baseline
        ``run() -> (dW, dc)``; ``to_numpy`` flattens both into one float64 vector. The
        forward pass (and autograd's graph) is built once, outside the timed call:

        * autograd through the eager loop;
        * the reverse loop of VJPs with the analytic Jacobian transpose,
          ``lam_l = W_{l+1}^T (s_{l+1} * lam_{l+1}) + weight_l`` with ``s = 1 - x^2``,
          then both parameter gradients in one batched product.
    """
    import torch

    from .newton import mlp_functions

    def flat(gs: Any) -> np.ndarray:
        return np.concatenate([ws.to_numpy(g).ravel() for g in gs])

    fns = mlp_functions(W, c)
    loss = (fns["loop"](x0) * weight).sum()
    out = [Baseline("autograd through eager loop",
                    lambda: torch.autograd.grad(loss, [W, c], retain_graph=True), flat,
                    "forward graph built once, untimed")]
    with torch.no_grad():
        X = fns["loop"](x0)  # (B, L, w)
        Xprev = torch.cat([x0[:, None], X[:, :-1]], 1)
        S = 1.0 - X * X
        Wd = W.detach()
    L = X.shape[1]

    def reverse_vjp() -> tuple[Any, Any]:
        with torch.no_grad():
            U = torch.empty_like(X)  # U_l = s_l * lam_l, the VJP through tanh at step l
            lam = weight[:, L - 1]
            for l in range(L - 1, -1, -1):
                u = S[:, l] * lam
                U[:, l] = u
                if l:
                    lam = torch.addmm(weight[:, l - 1], u, Wd[l])
            dW = torch.einsum("bli,blj->lij", U, Xprev)
            return dW, U.sum(0)

    out.append(Baseline("reverse VJP loop (analytic J^T)", reverse_vjp, flat,
                        "states stored, then one matvec per step"))
    return out


# -- the logistic map (a scalar nonlinear recurrence) ---------------------------------------


def logistic_reference(r: float, x0: np.ndarray, L: int) -> np.ndarray:
    """``x_l = r x_{l-1} (1 - x_{l-1})`` on Python floats; ``(B, L, 1)`` float64.

    Parameters
    ----------
    r : float
    x0 : np.ndarray, shape (B, 1)
    L : int
    """
    return _float_logistic(r, _f64(x0), L)()


def _float_logistic(r: float, x0: np.ndarray, L: int) -> Callable[[], np.ndarray]:
    def run() -> np.ndarray:
        out = np.empty((x0.shape[0], L, 1))
        for i in range(x0.shape[0]):
            x, xs = float(x0[i, 0]), []
            append = xs.append
            for _ in range(L):
                x = r * x * (1.0 - x)
                append(x)
            out[i, :, 0] = xs
        return out

    return run


def logistic_baselines(ws: Workspace, r: float, x0: np.ndarray, L: int) -> list[Baseline]:
    """Sequential contenders for the logistic map ``x_l = r x_{l-1} (1 - x_{l-1})``.

    Parameters
    ----------
    ws : Workspace
    r : float
    x0 : np.ndarray, shape (B, 1)
    L : int

    Returns
    -------
    list of Baseline
        The eager loop in the workspace's library, the float loop (CPU, few chains) and
        numba (when installed); each ``run()`` returns ``(B, L, 1)``.
    """
    if x0.ndim != 2 or x0.shape[1] != 1:
        raise ValueError(f"`x0` must have shape (B, 1); got {x0.shape}")
    xp, xt = ws.xp, ws.asarray(x0)

    def eager() -> Any:
        out, x = [], xt
        for _ in range(L):
            x = r * x * (1.0 - x)
            out.append(x)
        return xp.stack(out, axis=1)

    out = [Baseline(f"{ws.backend} eager loop", eager, ws.to_numpy, "one array op per step")]
    if x0.shape[0] <= FLOAT_LOOP_MAX_CHAINS:
        out.append(Baseline("Python float loop", _float_logistic(r, _f64(x0), L), _f64,
                            "float64"))
    if available("numba"):
        if "logistic" not in _NUMBA:
            import numba

            @numba.njit(cache=False)
            def kernel(r, x0, out):  # pragma: no cover - compiled
                for i in range(x0.shape[0]):
                    x = x0[i, 0]
                    for l in range(out.shape[1]):
                        x = r * x * (1.0 - x)
                        out[i, l, 0] = x

            _NUMBA["logistic"] = kernel
        kernel = _NUMBA["logistic"]
        xn = np.ascontiguousarray(x0, dtype=np.dtype(ws.dtype_name))

        def jitted() -> np.ndarray:
            res = np.empty((x0.shape[0], L, 1), dtype=xn.dtype)
            kernel(r, xn, res)
            return res

        out.append(Baseline("numba @njit loop", jitted, _f64, COMPILE_NOTE))
    return out


# -- the memory floor -------------------------------------------------------------------------

#: Label of the memory-floor row in ``bench linear`` (a pass over the data, not a solver).
FLOOR_NAME = "memory floor (not a solver)"


def memory_floor(A: np.ndarray, b: np.ndarray, threads: int | None = None) -> Callable[[], None]:
    """A pass that reads ``A`` and ``b`` once and writes an ``x`` of ``b``'s size once.

    ``np.multiply(A, b, out=x)`` for scalar and diagonal blocks; for dense blocks the row
    sums of every block (each byte of ``A`` read once) times ``b``. Split over ``threads``
    Python threads (NumPy releases the GIL), default ``os.cpu_count()``: the speed of
    light of any solver on this machine.

    Parameters
    ----------
    A : np.ndarray, shape (B, L, ...)
    b : np.ndarray, shape (B, L, w)
    threads : int, optional

    Returns
    -------
    callable
        ``run()`` performs the pass (its output is scratch).
    """
    import os
    from concurrent.futures import ThreadPoolExecutor

    n = max(1, threads or os.cpu_count() or 1)
    B, L, w = b.shape
    flatA = np.ascontiguousarray(A).reshape(B * L, -1)
    flatb = np.ascontiguousarray(b).reshape(B * L, w)
    out = np.empty_like(flatb)
    k = flatA.shape[1]
    cuts = np.linspace(0, B * L, n + 1).astype(int)
    pool = ThreadPoolExecutor(n) if n > 1 else None

    def part(i: int) -> None:
        lo, hi = cuts[i], cuts[i + 1]
        if k in (1, w):  # scalar or diagonal: one multiply reads A and b once
            np.multiply(flatA[lo:hi], flatb[lo:hi], out=out[lo:hi])
        else:  # dense: the row sums of A (every byte read once) times b
            np.multiply(np.add.reduce(flatA[lo:hi], axis=1, keepdims=True)[:, :1],
                        flatb[lo:hi], out=out[lo:hi])

    def run() -> None:
        if pool is None:
            part(0)
        else:
            list(pool.map(part, range(n)))

    return run
