"""Factored Jacobian blocks ``J_l = diag(s_l) W_l + c I``: the Jacobian never materialised.

Most layers of a network are an elementwise activation after a linear map,
``f_l(x) = act(W_l x + b_l)`` (plus ``x`` for a residual block). Their Jacobian is

    J_l = diag(act'(W_l x_{l-1} + b_l)) W_l   (+ I),

a per-state *scale* ``s_l`` (shape ``(..., L, w)``) times a weight ``W_l`` (shape ``(L, w, w)``)
that every batch element shares. Returning a :class:`Factored` from a ``jacobian`` callable
instead of the dense product saves its ``B L w^2`` memory and lets a backend fuse the
Jacobian into the linear solve: the Triton kernel forms each block in registers from ``s``
and ``W`` as it walks the steps, so it reads ``B L w + L w^2`` numbers instead of
``B L w^2``. On CPUs with numba a compiled kernel does the same
(``numba_kernels.solve_factored``: each step's ``W_l`` read once for the batch, any
``w``). Where no fused kernel applies (damping, an explicit ``linear_method``, no numba),
the blocks are materialised and solved by the generic path: a :class:`Factored` never
changes the answer, only the cost.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from .backends import get_backend
from .blocks import STRUCTURES, fits
from .errors import StepFunctionError
from .namespace import device_of

__all__ = ["Factored", "solve_direction"]


@dataclass(frozen=True)
class Factored:
    """Jacobian blocks ``J_l = diag(scale_l) @ weight_l + identity * I``.

    Parameters
    ----------
    scale : array, shape (..., L, w)
        The per-state row scale (``act'`` of the pre-activation).
    weight : array, shape (..., L, w, w)
        The weights; usually without batch dims (shared by the batch).
    identity : float, default 0.0
        The multiple of the identity added to every block (1.0 for residual blocks).

    Examples
    --------
    >>> import numpy as np
    >>> from pcrsolve.factored import Factored
    >>> W = np.arange(8.0).reshape(2, 2, 2)
    >>> J = Factored(np.ones((3, 2, 2)), W, identity=1.0)
    >>> J.dense(np).shape
    (3, 2, 2, 2)
    """

    scale: Any
    weight: Any
    identity: float = 0.0

    @property
    def dtype(self) -> Any:
        """The dtype of the blocks (that of ``scale``)."""
        return self.scale.dtype

    @property
    def shape(self) -> tuple[int, ...]:
        """The shape of the dense blocks this stands for, ``(..., L, w, w)``."""
        w = int(self.scale.shape[-1])
        return (*self.scale.shape, w)

    @property
    def ndim(self) -> int:
        """``len(shape)``."""
        return len(self.shape)

    def dense(self, xp: Any) -> Any:
        """The blocks as a dense array of shape ``(..., L, w, w)``."""
        J = self.scale[..., None] * self.weight
        if self.identity:
            eye = xp.eye(int(self.scale.shape[-1]), dtype=J.dtype, device=device_of(J))
            J = J + self.identity * eye
        return J

    def diagonal(self, xp: Any) -> Any:
        """The diagonals of the blocks, shape ``(..., L, w)`` (for quasi-Newton)."""
        return self.scale * xp.linalg.diagonal(self.weight) + self.identity

    def check(self, batch: tuple[int, ...], L: int, w: int) -> None:
        """Raise :class:`StepFunctionError` unless the shapes and dtypes fit the problem.

        Parameters
        ----------
        batch : tuple of int
            The batch shape of the states.
        L, w : int
            Steps and state width.
        """
        s, W = tuple(self.scale.shape), tuple(self.weight.shape)
        if not fits(s, (L, w), batch) or not fits(W, (L, w, w), batch):
            raise StepFunctionError(
                f"`jacobian` returned Factored blocks with scale shape {s} and weight shape "
                f"{W}; expected (..., {L}, {w}) and (..., {L}, {w}, {w}) with batch dims "
                f"broadcasting to {batch}"
            )
        if self.weight.dtype != self.scale.dtype:
            raise StepFunctionError(
                f"`jacobian` returned Factored blocks whose weight dtype {self.weight.dtype} "
                f"differs from the scale dtype {self.scale.dtype}"
            )
        if not isinstance(self.identity, (int, float)):
            raise StepFunctionError(
                f"Factored `identity` must be a Python number; got {type(self.identity).__name__}"
            )


def solve_direction(J: Any, R: Any, structure: str, method: str, xp: Any,
                    gamma: Any = None) -> tuple[Any, str]:
    """Solve the Newton system ``D_l = J_l D_{l-1} + R_l``, ``D_0 = 0``.

    Parameters
    ----------
    J : array or Factored
        The blocks, of ``structure``; a :class:`Factored` stands for dense blocks.
    R : array, shape (..., L, w)
        The residuals.
    structure : {"dense", "diagonal", "scalar"}
    method : str
        As in :func:`pcrsolve.solve_linear`; ``"auto"`` also considers the backend's fused
        factored kernel.
    xp : module
        Array namespace.
    gamma : array, shape (...), optional
        Per-chain damping factor scaling ``J`` (None: undamped).

    Returns
    -------
    D : array, shape (..., L, w)
    method : str
        The linear method that ran (``"kernel"`` for the fused factored kernel).
    """
    from .linear import choose_method, solve_linear
    from .system import BidiagonalSystem

    if isinstance(J, Factored):
        backend = get_backend(xp)
        # "auto" takes the fused kernel on accelerators only (the Triton interpreter on a
        # CPU is for testing); "kernel" takes it wherever it runs
        if gamma is None and (method == "kernel" or (method == "auto"
                              and backend.is_accelerator(device_of(R)))):
            fused = backend.fast_factored(J, R)
            if fused is not None:
                return fused(), "kernel"
        if gamma is None and method in ("auto", "kernel"):
            # a compiled CPU kernel (numba): never forms the dense blocks either
            fused = backend.compiled_factored(J, R)
            if fused is not None:
                return fused(), "kernel"
        J = J.dense(xp)
    if gamma is not None:
        extra = (None,) * (1 + STRUCTURES[structure].block_ndim)
        J = gamma[(..., *extra)] * J
    system = BidiagonalSystem(J, R, structure=structure, check_finite=False, xp=xp)
    if method == "auto":
        method = choose_method(system)
    return solve_linear(system, method=method), method
