"""Block-bidiagonal linear systems: the linear recurrence written as one system.

A system of length ``L`` and width ``w`` says

    x_l = A_l x_{l-1} + b_l,   l = 1..L,   x_0 given            (forward)
    x_l = A_l x_{l+1} + b_l,   l = 1..L,   x_{L+1} = x0 given     (reverse)

which, with ``X = (x_1, ..., x_L)``, is ``M X = r`` for a block lower (forward) or upper
(reverse) bidiagonal matrix ``M`` with identity blocks on the diagonal and ``-A_l`` off it.
"""

from __future__ import annotations

from typing import Any

from .blocks import STRUCTURES, Structure
from .errors import InvalidSystemError
from .namespace import (
    broadcast_shapes,
    infer_namespace,
    shared_device,
    working_dtype,
)
from .namespace import check_finite as check_all_finite

__all__ = ["BidiagonalSystem"]

_DENSE_LIMIT = 20_000  # largest L*w that to_dense() will assemble


class BidiagonalSystem:
    """The linear recurrence ``x_l = A_l x_{l-1} + b_l`` as a block-bidiagonal system.

    Parameters
    ----------
    A : array
        Coefficient blocks: ``(..., L, w, w)`` for ``structure="dense"``, ``(..., L, w)``
        for ``"diagonal"``, ``(..., L)`` for ``"scalar"``.
    b : array, shape (..., L, w)
        Right-hand sides.
    x0 : array, shape (..., w), optional
        The given state before the first step (after the last one when ``reverse``).
        Defaults to zeros.
    structure : {"dense", "diagonal", "scalar"}, default "dense"
        How ``A`` is stored.
    reverse : bool, default False
        Solve ``x_l = A_l x_{l+1} + b_l`` (the direction of adjoint/backward passes).
    check_finite : bool, default True
        Raise :class:`~pcrsolve.NonFiniteError` if an input holds NaN or Inf (costs one
        pass over the data and, on a GPU, a synchronisation).

    Attributes
    ----------
    length : int
        ``L``, the number of steps (may be 0).
    width : int
        ``w``, the size of one state.
    batch_shape : tuple of int
        The broadcast batch shape of ``A``, ``b`` and ``x0``.
    dtype
        The dtype of the solution (the promoted input dtype).
    xp : module
        The Array-API namespace of the inputs.

    Raises
    ------
    InvalidSystemError
        If a shape, dtype or structure is wrong; the message names the argument.
    BackendMismatchError
        If the arrays come from different libraries or devices.
    NonFiniteError
        If ``check_finite`` and an input holds NaN or Inf.

    Examples
    --------
    >>> import numpy as np
    >>> import pcrsolve
    >>> A = np.full((5, 1), 0.5)          # diagonal blocks, L = 5, w = 1
    >>> b = np.ones((5, 1))
    >>> system = pcrsolve.BidiagonalSystem(A, b, structure="diagonal")
    >>> pcrsolve.solve_linear(system)[:, 0]
    array([1.    , 1.5   , 1.75  , 1.875 , 1.9375])
    """

    def __init__(
        self,
        A: Any,
        b: Any,
        x0: Any | None = None,
        *,
        structure: str = "dense",
        reverse: bool = False,
        check_finite: bool = True,
        xp: Any | None = None,
    ) -> None:
        if structure not in STRUCTURES:
            raise InvalidSystemError(
                f"`structure` must be one of {sorted(STRUCTURES)}; got {structure!r}"
            )
        for name, value in (("A", A), ("b", b)):
            if value is None:
                raise InvalidSystemError(f"`{name}` is required; got None")
        arrays = {"A": A, "b": b, "x0": x0}
        self.xp = xp = infer_namespace(arrays, xp)
        self.device = shared_device(arrays)
        self.work_dtype, self.dtype = working_dtype(arrays, xp)
        s: Structure = STRUCTURES[structure]
        self.structure: Structure = s
        numpy_bool = (type(reverse).__module__ == "numpy"
                      and type(reverse).__name__ in ("bool", "bool_"))
        if not (isinstance(reverse, bool) or numpy_bool):
            raise InvalidSystemError(
                f"`reverse` must be a bool (True or False); got {reverse!r} of type "
                f"{type(reverse).__name__}"
            )
        self.reverse = bool(reverse)

        if b.ndim < 2:
            raise InvalidSystemError(
                f"`b` must have shape (..., L, w); got shape {tuple(b.shape)}"
            )
        L, w = int(b.shape[-2]), int(b.shape[-1])
        if w < 1:
            raise InvalidSystemError(f"`b` must have at least one feature (w >= 1); got {w}")
        expected = (L, *s.block_shape(w))
        shown = "(..., " + ", ".join(str(e) for e in expected) + ")"
        if A.ndim < len(expected) or tuple(A.shape[A.ndim - len(expected) :]) != expected:
            hint = ""
            others = [
                n
                for n, t in STRUCTURES.items()
                if n != structure
                and A.ndim >= 1 + t.block_ndim
                and tuple(A.shape[A.ndim - 1 - t.block_ndim :]) == (L, *t.block_shape(w))
            ]
            if others:
                hint = f" (did you mean structure={others[0]!r}?)"
            raise InvalidSystemError(
                f"`A` must have shape {shown} for structure={structure!r} with L={L}, w={w} "
                f"taken from `b`; got shape {tuple(A.shape)}{hint}"
            )
        if x0 is not None and (x0.ndim < 1 or int(x0.shape[-1]) != w):
            raise InvalidSystemError(
                f"`x0` must have shape (..., {w}) to match `b`; got shape {tuple(x0.shape)}"
            )
        shapes = {"A": s.batch_shape(A), "b": tuple(b.shape[:-2])}
        if x0 is not None:
            shapes["x0"] = tuple(x0.shape[:-1])
        try:
            self.batch_shape = broadcast_shapes(shapes)
        except Exception as exc:
            raise InvalidSystemError(str(exc)) from None
        if check_finite:
            check_all_finite(arrays, xp)
        self.A, self.b, self.x0 = A, b, x0
        self.length, self.width = L, w

    # ------------------------------------------------------------------------------------
    def __repr__(self) -> str:
        return (
            f"BidiagonalSystem(L={self.length}, w={self.width}, structure="
            f"{self.structure.name!r}, batch_shape={self.batch_shape}, dtype={self.dtype}, "
            f"reverse={self.reverse})"
        )

    def _x0(self, dtype: Any) -> Any:
        xp = self.xp
        shape = (*self.batch_shape, self.width)
        if self.x0 is None:
            return xp.zeros(shape, dtype=dtype, device=self.device)
        return xp.broadcast_to(xp.astype(self.x0, dtype, copy=False), shape)

    def forward_arrays(self) -> tuple[Any, Any, Any]:
        """``(A, b, x0)`` in the working dtype and in *forward* orientation.

        For a reverse system the step axis is flipped, so that every solver only has to
        handle ``x_l = A_l x_{l-1} + b_l``. ``b`` and ``x0`` are broadcast to the full
        batch shape; ``A`` keeps its own (broadcastable) batch shape.

        Returns
        -------
        A : array, shape (..., L, w, w) / (..., L, w) / (..., L)
        b : array, shape (..., L, w)
        x0 : array, shape (..., w)
        """
        xp, dt = self.xp, self.work_dtype
        A = xp.astype(self.A, dt, copy=False)
        b = xp.astype(self.b, dt, copy=False)
        b = xp.broadcast_to(b, (*self.batch_shape, self.length, self.width))
        if self.reverse:
            A = self.structure.flip(A, xp)
            b = xp.flip(b, axis=-2)
        return A, b, self._x0(dt)

    def neighbours(self, x: Any) -> Any:
        """The states each equation couples to: ``x_{l-1}`` (forward) or ``x_{l+1}``.

        Parameters
        ----------
        x : array, shape (..., L, w)

        Returns
        -------
        array, shape (..., L, w)
            With ``x0`` in the boundary position.
        """
        xp = self.xp
        batch = broadcast_shapes({"x": tuple(x.shape[:-2]), "system": self.batch_shape})
        x = xp.broadcast_to(x, (*batch, self.length, self.width))
        x0 = xp.broadcast_to(self._x0(x.dtype), (*batch, self.width))[..., None, :]
        if self.reverse:
            return xp.concat([x[..., 1:, :], x0], axis=-2)
        return xp.concat([x0, x[..., :-1, :]], axis=-2)

    def residual(self, x: Any) -> Any:
        """``x_l - A_l x_{l∓1} - b_l`` for a candidate solution.

        Parameters
        ----------
        x : array, shape (..., L, w)

        Returns
        -------
        array, shape (..., L, w)
        """
        if tuple(x.shape[-2:]) != (self.length, self.width):
            raise InvalidSystemError(
                f"`x` must have shape (..., {self.length}, {self.width}); got {tuple(x.shape)}"
            )
        xp = self.xp
        A = xp.astype(self.A, x.dtype, copy=False)
        b = xp.astype(self.b, x.dtype, copy=False)
        return x - self.structure.apply(A, self.neighbours(x), xp) - b

    def transpose(self, b: Any | None = None) -> BidiagonalSystem:
        """The transposed system ``M^T y = b`` (the adjoint of this recurrence).

        For a forward system this is the reverse recurrence
        ``y_l = A_{l+1}^T y_{l+1} + b_l`` with ``y_{L+1} = 0``, the backward pass of
        reverse-mode differentiation; transposing a reverse system gives a forward one.

        Parameters
        ----------
        b : array, shape (..., L, w), optional
            Right-hand side of the transposed system; defaults to this system's ``b``.

        Returns
        -------
        BidiagonalSystem
        """
        xp, s = self.xp, self.structure
        if b is not None and (getattr(b, "ndim", 0) < 2
                              or tuple(b.shape[-2:]) != (self.length, self.width)):
            raise InvalidSystemError(
                f"`b` of the transposed system must have shape (..., {self.length}, "
                f"{self.width}); got {tuple(getattr(b, 'shape', ()))}"
            )
        At = s.transpose(self.A, xp)
        if self.length:
            zero = s.zeros(s.batch_shape(At), 1, self.width, At, xp)
            if self.reverse:  # A'_l = A_{l-1}^T, A'_1 = 0
                At = s.concat([zero, s.take(At, slice(0, self.length - 1))], xp)
            else:  # A'_l = A_{l+1}^T, A'_L = 0
                At = s.concat([s.take(At, slice(1, None)), zero], xp)
        return BidiagonalSystem(
            At,
            self.b if b is None else b,
            structure=s.name,
            reverse=not self.reverse,
            check_finite=False,
            xp=xp,
        )

    def to_dense(self) -> tuple[Any, Any]:
        """The assembled matrix and right-hand side, for checking small systems.

        Returns
        -------
        M : array, shape (..., L*w, L*w)
        r : array, shape (..., L*w)
            ``M @ r``-compatible: the solution ``X`` (flattened ``(..., L*w)``) satisfies
            ``M X = r``, where ``x0`` has been moved into ``r``.

        Raises
        ------
        InvalidSystemError
            If ``L*w`` exceeds 20 000 (the matrix would be too large to be useful).
        """
        L, w, xp = self.length, self.width, self.xp
        if L * w > _DENSE_LIMIT:
            raise InvalidSystemError(
                f"to_dense() assembles an (L*w)x(L*w) matrix; L*w = {L * w} exceeds "
                f"{_DENSE_LIMIT}. Use it only on small systems."
            )
        dt = self.work_dtype
        Ad = xp.astype(self.structure.to_dense(self.A, w, xp), dt, copy=False)
        shift = xp.eye(L, k=1 if self.reverse else -1, dtype=dt, device=self.device)
        S = Ad[..., :, :, None, :] * shift[:, None, :, None]
        S = xp.broadcast_to(S, (*self.batch_shape, L, w, L, w))
        M = xp.eye(L * w, dtype=dt, device=self.device) - xp.reshape(
            S, (*self.batch_shape, L * w, L * w)
        )
        _, b, x0 = self.forward_arrays()
        if self.reverse:
            b = xp.flip(b, axis=-2)
        if L:
            edge = L - 1 if self.reverse else 0
            Ae = self.structure.take(xp.astype(self.A, dt, copy=False), slice(edge, edge + 1))
            kick = self.structure.apply(Ae, x0[..., None, :], xp)
            mask = xp.astype(xp.arange(L, device=self.device) == edge, dt)[:, None]
            b = b + mask * kick
        return M, xp.reshape(b, (*self.batch_shape, L * w))
