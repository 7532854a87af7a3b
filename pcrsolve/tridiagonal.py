"""Block-tridiagonal linear systems and their parallel solvers.

A system of ``L`` block rows of width ``w`` says, for ``l = 1..L``,

    lower_l x_{l-1} + diag_l x_l + upper_l x_{l+1} = rhs_l

with ``x_0 = x_{L+1} = 0``: ``lower_1`` and ``upper_L`` multiply nothing and are ignored.
All three block arrays hold ``L`` blocks (shape ``(..., L, w, w)`` for dense blocks), so that
block ``l`` of each belongs to row ``l``; the unused end blocks are replaced by zeros (their
values, even NaN, never reach a result).

It is the system of a trust-region / Levenberg–Marquardt step on a recurrence: with
``G = dr/dX`` the block lower-bidiagonal Jacobian of the stacked residuals (identity on the
diagonal, ``-J_l`` below), ``(G^T G + λ D) Δ = -G^T r`` is symmetric positive definite and
block-tridiagonal; :meth:`TridiagonalSystem.normal_equations` builds it.

=================  ===========  =====================  ======================
method             depth        work (dense blocks)    block solves
=================  ===========  =====================  ======================
``"sequential"``   2 L          O(L w^3)               L, one row at a time
``"pcr"``          log2 L + 1   O(L w^3 log2 L)        L per level
``"cr"``           2 log2 L     O(L w^3)               L/2 + L/4 + ... + 1
=================  ===========  =====================  ======================

None of them pivots between rows: they are meant for symmetric positive definite or
block diagonally dominant systems (every reduced system is then again one of those).
"""

from __future__ import annotations

import math
import numbers
from typing import Any

from .backends import get_backend
from .blocks import SCALAR, STRUCTURES, Structure
from .errors import InputError, InvalidSystemError
from .namespace import (
    broadcast_shapes,
    device_of,
    infer_namespace,
    shared_device,
    working_dtype,
)
from .namespace import check_finite as check_all_finite

__all__ = [
    "TRIDIAGONAL_METHODS",
    "TridiagonalSystem",
    "choose_tridiagonal_method",
    "solve_tridiagonal",
]

_DENSE_LIMIT = 20_000  # largest L*w that to_dense() will assemble
_ORDER = {"scalar": 0, "diagonal": 1, "dense": 2}


# ----------------------------------------------------------------------------------------
# Block helpers (beyond pcrsolve.blocks): solves, promotion, shifts along the step axis.

def _block_solve(
    s: Structure, M: Any, blocks: list[Any], vecs: list[Any], xp: Any
) -> tuple[list[Any], list[Any]]:
    """``M^{-1} B`` for each block array ``B`` and ``M^{-1} v`` for each vector array ``v``.

    Parameters
    ----------
    s : Structure
        The structure of ``M`` and of ``blocks``.
    M : array, shape (..., n, w, w) / (..., n, w) / (..., n)
        The blocks to invert, step by step (or without the step axis: one block each).
    blocks : list of arrays shaped like ``M``
    vecs : list of arrays, shape (..., n, w)
        Vectors; their batch dims may be longer than those of ``M``.
    xp : module

    Returns
    -------
    list of arrays, list of arrays
        The solved blocks and vectors, in the order given.

    Notes
    -----
    Dense blocks use one ``xp.linalg.solve`` (one factorisation) for all right-hand sides
    when the vectors have the batch shape of ``M``; two otherwise (the blocks are solved at
    their own, smaller, batch shape). Diagonal and scalar blocks divide elementwise.
    """
    if s.block_ndim == 2:
        cols = [B.shape[-1] for B in blocks]
        same = all(tuple(v.shape[:-1]) == tuple(M.shape[:-2]) for v in vecs)
        if same:
            parts = list(blocks) + [v[..., None] for v in vecs]
            X = xp.linalg.solve(M, xp.concat(parts, axis=-1)) if parts else None
            out, start = [], 0
            for c in cols + [1] * len(vecs):
                out.append(X[..., start:start + c])
                start += c
            return out[: len(blocks)], [v[..., 0] for v in out[len(blocks):]]
        out_b: list[Any] = []
        if blocks:
            X = xp.linalg.solve(M, xp.concat(list(blocks), axis=-1))
            start = 0
            for c in cols:
                out_b.append(X[..., start:start + c])
                start += c
        out_v: list[Any] = []
        if vecs:
            V = xp.linalg.solve(M, xp.stack(list(vecs), axis=-1))
            out_v = [V[..., i] for i in range(len(vecs))]
        return out_b, out_v
    if s.block_ndim == 1:
        return [B / M for B in blocks], [v / M for v in vecs]
    return [B / M for B in blocks], [v / M[..., None] for v in vecs]


def _promote(A: Any, src: Structure, dst: Structure, w: int, xp: Any) -> Any:
    """Blocks ``A`` of structure ``src`` written in the (richer) structure ``dst``."""
    if src.name == dst.name:
        return A
    if dst.block_ndim == 2:
        return src.to_dense(A, w, xp)
    # scalar -> diagonal
    return A[..., None] * xp.ones((w,), dtype=A.dtype, device=device_of(A))


def _identity(s: Structure, batch: tuple[int, ...], n: int, w: int, like: Any, xp: Any) -> Any:
    """``n`` identity blocks of structure ``s``."""
    if s.block_ndim == 2:
        eye = xp.eye(w, dtype=like.dtype, device=device_of(like))
        return xp.broadcast_to(eye, (*batch, n, w, w))
    return xp.ones((*batch, n, *s.block_shape(w)), dtype=like.dtype, device=device_of(like))


def _shift_blocks(s: Structure, A: Any, k: int, w: int, xp: Any, *, down: bool) -> Any:
    """Blocks moved ``k`` steps along the step axis, zeros shifted in.

    ``down=True`` puts block ``l - k`` at position ``l`` (the neighbour below in index);
    ``down=False`` puts block ``l + k`` at position ``l``.
    """
    n = A.shape[A.ndim + s.step_axis]
    k = min(k, n)
    zero = s.zeros(s.batch_shape(A), k, w, A, xp)
    if down:
        return s.concat([zero, s.take(A, slice(0, n - k))], xp)
    return s.concat([s.take(A, slice(k, None)), zero], xp)


def _shift_vecs(x: Any, k: int, xp: Any, *, down: bool) -> Any:
    """States ``(..., n, w)`` moved ``k`` steps along axis -2, zeros shifted in."""
    n = x.shape[-2]
    k = min(k, n)
    zero = xp.zeros_like(x[..., :k, :])
    if down:
        return xp.concat([zero, x[..., : n - k, :]], axis=-2)
    return xp.concat([x[..., k:, :], zero], axis=-2)


def _unstack(x: Any, axis: int, xp: Any) -> tuple[Any, ...]:
    if hasattr(xp, "unstack"):
        return tuple(xp.unstack(x, axis=axis))
    return tuple(x[(..., i) + (slice(None),) * (-axis - 1)] for i in range(x.shape[axis]))


# ----------------------------------------------------------------------------------------
class TridiagonalSystem:
    """A block-tridiagonal linear system ``lower_l x_{l-1} + diag_l x_l + upper_l x_{l+1} = rhs_l``.

    Parameters
    ----------
    lower, diag, upper : array
        The blocks of each row: ``(..., L, w, w)`` for ``structure="dense"``, ``(..., L, w)``
        for ``"diagonal"``, ``(..., L)`` for ``"scalar"``. Block ``l`` of each array belongs
        to row ``l``; ``lower[..., 0, ...]`` (no ``x_0``) and ``upper[..., L-1, ...]`` (no
        ``x_{L+1}``) are ignored and may hold anything.
    rhs : array, shape (..., L, w)
        Right-hand sides.
    structure : {"dense", "diagonal", "scalar"}, default "dense"
        How all three block arrays are stored.
    check_finite : bool, default True
        Raise :class:`~pcrsolve.NonFiniteError` if a used block or ``rhs`` holds NaN or Inf.
    xp : module, optional
        The Array-API namespace; inferred from the arrays by default.

    Attributes
    ----------
    length : int
        ``L``, the number of block rows (may be 0).
    width : int
        ``w``, the size of one block.
    batch_shape : tuple of int
        The broadcast batch shape of all four arrays.
    block_batch_shape : tuple of int
        The broadcast batch shape of the three block arrays.
    dtype
        The dtype of the solution (the promoted input dtype).
    work_dtype
        The dtype solvers compute in (float32 for float16/bfloat16 inputs).
    structure : Structure
    xp : module

    Raises
    ------
    InvalidSystemError
        If a shape or structure is wrong; the message names the argument.
    InputError
        If a dtype is not real floating point.
    BackendMismatchError
        If the arrays come from different libraries or devices.
    NonFiniteError
        If ``check_finite`` and a used block or ``rhs`` holds NaN or Inf.

    Examples
    --------
    >>> import numpy as np
    >>> from pcrsolve.tridiagonal import TridiagonalSystem, solve_tridiagonal
    >>> L = 4                              # the 1-D Laplacian, scalar blocks, w = 1
    >>> system = TridiagonalSystem(-np.ones(L), 2 * np.ones(L), -np.ones(L), np.ones((L, 1)),
    ...                            structure="scalar")
    >>> solve_tridiagonal(system, method="pcr")[:, 0]
    array([2., 3., 3., 2.])
    """

    def __init__(
        self,
        lower: Any,
        diag: Any,
        upper: Any,
        rhs: Any,
        *,
        structure: str = "dense",
        check_finite: bool = True,
        xp: Any | None = None,
    ) -> None:
        if structure not in STRUCTURES:
            raise InvalidSystemError(
                f"`structure` must be one of {sorted(STRUCTURES)}; got {structure!r}"
            )
        arrays = {"lower": lower, "diag": diag, "upper": upper, "rhs": rhs}
        for name, value in arrays.items():
            if value is None:
                raise InvalidSystemError(f"`{name}` is required; got None")
        self.xp = xp = infer_namespace(arrays, xp)
        self.device = shared_device(arrays)
        self.work_dtype, self.dtype = working_dtype(arrays, xp)
        s: Structure = STRUCTURES[structure]
        self.structure = s

        if rhs.ndim < 2:
            raise InvalidSystemError(
                f"`rhs` must have shape (..., L, w); got shape {tuple(rhs.shape)}"
            )
        L, w = int(rhs.shape[-2]), int(rhs.shape[-1])
        if w < 1:
            raise InvalidSystemError(f"`rhs` must have at least one feature (w >= 1); got {w}")
        expected = (L, *s.block_shape(w))
        shown = "(..., " + ", ".join(str(e) for e in expected) + ")"
        for name in ("lower", "diag", "upper"):
            A = arrays[name]
            if A.ndim < len(expected) or tuple(A.shape[A.ndim - len(expected):]) != expected:
                others = [
                    n for n, t in STRUCTURES.items()
                    if n != structure and A.ndim >= 1 + t.block_ndim
                    and tuple(A.shape[A.ndim - 1 - t.block_ndim:]) == (L, *t.block_shape(w))
                ]
                hint = f" (did you mean structure={others[0]!r}?)" if others else ""
                raise InvalidSystemError(
                    f"`{name}` must have shape {shown} for structure={structure!r} with "
                    f"L={L}, w={w} taken from `rhs`; got shape {tuple(A.shape)}{hint}"
                )
        try:
            self.block_batch_shape = broadcast_shapes(
                {n: s.batch_shape(arrays[n]) for n in ("lower", "diag", "upper")})
            self.batch_shape = broadcast_shapes(
                {"blocks": self.block_batch_shape, "rhs": tuple(rhs.shape[:-2])})
        except InputError as exc:
            raise InvalidSystemError(str(exc)) from None
        if check_finite:
            used = {
                "lower": s.take(lower, slice(1, None)) if L else lower,
                "diag": diag,
                "upper": s.take(upper, slice(0, L - 1)) if L else upper,
                "rhs": rhs,
            }
            check_all_finite(used, xp)
        self.lower, self.diag, self.upper, self.rhs = lower, diag, upper, rhs
        self.length, self.width = L, w

    # ------------------------------------------------------------------------------------
    @classmethod
    def normal_equations(
        cls,
        J: Any,
        r: Any,
        damping: Any = 0.0,
        scaling: Any | None = None,
        *,
        structure: str = "dense",
        scaling_structure: str = "diagonal",
        check_finite: bool = True,
        xp: Any | None = None,
    ) -> TridiagonalSystem:
        """The damped normal equations ``(G^T G + λ D) Δ = -G^T r`` of a recurrence.

        ``G`` is the Jacobian of the stacked residuals ``r_l = X_l - f_l(X_{l-1})`` with
        respect to ``X = (X_1, ..., X_L)``: block lower-bidiagonal, identity blocks on the
        diagonal and ``-J_l`` at block ``(l, l-1)`` (``J_1`` multiplies the fixed ``x_0`` and
        does not appear). Then, with ``J_{L+1} = 0``,

        * ``diag_l  = I + J_{l+1}^T J_{l+1} + λ D_l``,
        * ``upper_l = -J_{l+1}^T`` (coefficient of ``Δ_{l+1}`` in row ``l``),
        * ``lower_l = -J_l`` (coefficient of ``Δ_{l-1}``; the transpose of ``upper_{l-1}``),
        * ``rhs_l   = -r_l + J_{l+1}^T r_{l+1}``.

        The matrix is symmetric positive definite for ``λ D >= 0``; ``λ = 0`` gives back the
        Gauss–Newton (= Newton) step ``G Δ = -r``.

        Parameters
        ----------
        J : array
            The step Jacobians, stored like :class:`~pcrsolve.BidiagonalSystem`'s ``A``:
            ``(..., L, w, w)``, ``(..., L, w)`` or ``(..., L)`` by ``structure``. ``J[..., 0]``
            is not used.
        r : array, shape (..., L, w)
            The residuals.
        damping : float or array of shape (...), default 0.0
            ``λ >= 0``, one per batch element if an array.
        scaling : array, optional
            ``D``, the diagonal scaling: ``(..., L, w)`` for ``scaling_structure="diagonal"``,
            ``(..., L)`` for ``"scalar"``, ``(..., L, w, w)`` for ``"dense"``. Default:
            the identity.
        structure : {"dense", "diagonal", "scalar"}, default "dense"
            How ``J`` is stored.
        scaling_structure : {"dense", "diagonal", "scalar"}, default "diagonal"
            How ``scaling`` is stored.
        check_finite : bool, default True
        xp : module, optional

        Returns
        -------
        TridiagonalSystem
            In the richer structure of ``J`` and ``scaling`` (dense > diagonal > scalar), in
            the working dtype of the inputs (float32 for half-precision inputs).

        Raises
        ------
        InvalidSystemError, InputError
            If a shape, dtype, structure or ``damping`` is wrong; the message names it.

        Examples
        --------
        >>> import numpy as np
        >>> from pcrsolve.tridiagonal import TridiagonalSystem, solve_tridiagonal
        >>> J = np.full((3, 1), 0.5)           # x_l = 0.5 x_{l-1}, w = 1, diagonal blocks
        >>> r = np.ones((3, 1))
        >>> system = TridiagonalSystem.normal_equations(J, r, structure="diagonal")
        >>> solve_tridiagonal(system)[:, 0]    # the Newton step: G d = -r
        array([-1.  , -1.5 , -1.75])
        """
        for name, value in (("structure", structure), ("scaling_structure", scaling_structure)):
            if value not in STRUCTURES:
                raise InvalidSystemError(
                    f"`{name}` must be one of {sorted(STRUCTURES)}; got {value!r}")
        for name, value in (("J", J), ("r", r)):
            if value is None:
                raise InvalidSystemError(f"`{name}` is required; got None")
        scalar_damping = isinstance(damping, numbers.Real) and not isinstance(damping, bool)
        if isinstance(damping, bool) or (not scalar_damping and not hasattr(damping, "shape")):
            raise InputError(
                f"`damping` must be a real number or an array of shape (...); got "
                f"{type(damping).__name__}")
        arrays = {"J": J, "r": r, "damping": None if scalar_damping else damping,
                  "scaling": scaling}
        xp = infer_namespace(arrays, xp)
        shared_device(arrays)
        work, _ = working_dtype(arrays, xp)
        sJ = STRUCTURES[structure]
        sD = STRUCTURES[scaling_structure] if scaling is not None else SCALAR
        out = sJ if _ORDER[sJ.name] >= _ORDER[sD.name] else sD

        if r.ndim < 2:
            raise InvalidSystemError(f"`r` must have shape (..., L, w); got shape {tuple(r.shape)}")
        L, w = int(r.shape[-2]), int(r.shape[-1])
        if w < 1:
            raise InvalidSystemError(f"`r` must have at least one feature (w >= 1); got {w}")
        checks = [("J", J, sJ, structure, "structure")]
        if scaling is not None:
            checks.append(("scaling", scaling, sD, scaling_structure, "scaling_structure"))
        for name, A, s, sname, key in checks:
            expected = (L, *s.block_shape(w))
            if A.ndim < len(expected) or tuple(A.shape[A.ndim - len(expected):]) != expected:
                shown = "(..., " + ", ".join(str(e) for e in expected) + ")"
                raise InvalidSystemError(
                    f"`{name}` must have shape {shown} for {key}={sname!r} with L={L}, w={w} "
                    f"taken from `r`; got shape {tuple(A.shape)}")
        shapes = {"J": sJ.batch_shape(J), "r": tuple(r.shape[:-2])}
        if not scalar_damping:
            shapes["damping"] = tuple(damping.shape)
        if scaling is not None:
            shapes["scaling"] = sD.batch_shape(scaling)
        try:
            broadcast_shapes(shapes)
        except InputError as exc:
            raise InvalidSystemError(str(exc)) from None
        if scalar_damping:
            if not math.isfinite(float(damping)) or float(damping) < 0:
                raise InputError(f"`damping` must be finite and >= 0; got {damping!r}")
        if check_finite:
            check_all_finite({n: a for n, a in arrays.items() if a is not None}, xp)
        if not scalar_damping and math.prod(damping.shape) and bool(xp.any(damping < 0)):
            raise InputError(
                f"`damping` must be >= 0; got negative values (shape {tuple(damping.shape)})")

        Jw = xp.astype(J, work, copy=False)
        rw = xp.astype(r, work, copy=False)
        Jw = _promote(Jw, sJ, out, w, xp)
        jbatch = out.batch_shape(Jw)
        eye = _identity(out, jbatch, L, w, Jw, xp)
        if L:
            zero = out.zeros(jbatch, 1, w, Jw, xp)
            Jnext = out.concat([out.take(Jw, slice(1, None)), zero], xp)  # J_{l+1}, J_{L+1} = 0
            lower = -out.concat([zero, out.take(Jw, slice(1, None))], xp)
        else:
            Jnext = lower = Jw
        JnT = out.transpose(Jnext, xp)
        diag = eye + out.compose(JnT, Jnext, xp)
        upper = -JnT
        if scaling is not None or not scalar_damping or float(damping) != 0.0:
            D = eye if scaling is None else _promote(
                xp.astype(scaling, work, copy=False), sD, out, w, xp)
            if scalar_damping:
                lam = float(damping)
            else:
                lam = xp.astype(damping, work, copy=False)
                lam = xp.reshape(lam, (*lam.shape, 1, *(1,) * out.block_ndim))
            diag = diag + lam * D
        r_next = _shift_vecs(rw, 1, xp, down=False)
        rhs = out.apply(JnT, r_next, xp) - rw
        return cls(lower, diag, upper, rhs, structure=out.name, check_finite=False, xp=xp)

    # ------------------------------------------------------------------------------------
    def __repr__(self) -> str:
        return (
            f"TridiagonalSystem(L={self.length}, w={self.width}, structure="
            f"{self.structure.name!r}, batch_shape={self.batch_shape}, dtype={self.dtype})"
        )

    def arrays(self, dtype: Any | None = None) -> tuple[Any, Any, Any, Any]:
        """``(lower, diag, upper, rhs)`` ready for a solver.

        The blocks are broadcast to :attr:`block_batch_shape`, ``rhs`` to
        :attr:`batch_shape`; the ignored end blocks are zeros.

        Parameters
        ----------
        dtype : optional
            Default: the working dtype.

        Returns
        -------
        lower, diag, upper : arrays, shape (..., L, <block>)
        rhs : array, shape (..., L, w)
        """
        xp, s, L, w = self.xp, self.structure, self.length, self.width
        dt = self.work_dtype if dtype is None else dtype
        shape = (*self.block_batch_shape, L, *s.block_shape(w))
        lo, di, up = (xp.broadcast_to(xp.astype(A, dt, copy=False), shape)
                      for A in (self.lower, self.diag, self.upper))
        if L:
            zero = s.zeros(self.block_batch_shape, 1, w, di, xp)
            lo = s.concat([zero, s.take(lo, slice(1, None))], xp)
            up = s.concat([s.take(up, slice(0, L - 1)), zero], xp)
        rhs = xp.broadcast_to(xp.astype(self.rhs, dt, copy=False),
                              (*self.batch_shape, L, w))
        return lo, di, up, rhs

    def residual(self, x: Any) -> Any:
        """``lower_l x_{l-1} + diag_l x_l + upper_l x_{l+1} - rhs_l`` for a candidate ``x``.

        Parameters
        ----------
        x : array, shape (..., L, w)

        Returns
        -------
        array, shape (..., L, w)
            In the dtype of ``x``.
        """
        if getattr(x, "ndim", 0) < 2 or tuple(x.shape[-2:]) != (self.length, self.width):
            raise InvalidSystemError(
                f"`x` must have shape (..., {self.length}, {self.width}); got "
                f"{tuple(getattr(x, 'shape', ()))}"
            )
        xp, s = self.xp, self.structure
        lo, di, up, rhs = self.arrays(x.dtype)
        return (s.apply(lo, _shift_vecs(x, 1, xp, down=True), xp) + s.apply(di, x, xp)
                + s.apply(up, _shift_vecs(x, 1, xp, down=False), xp) - rhs)

    def to_dense(self) -> tuple[Any, Any]:
        """The assembled matrix and right-hand side, for checking small systems.

        Returns
        -------
        M : array, shape (..., L*w, L*w)
        rhs : array, shape (..., L*w)
            The solution ``X`` (flattened to ``(..., L*w)``) satisfies ``M X = rhs``.

        Raises
        ------
        InvalidSystemError
            If ``L*w`` exceeds 20 000.
        """
        L, w, xp, s = self.length, self.width, self.xp, self.structure
        if L * w > _DENSE_LIMIT:
            raise InvalidSystemError(
                f"to_dense() assembles an (L*w)x(L*w) matrix; L*w = {L * w} exceeds "
                f"{_DENSE_LIMIT}. Use it only on small systems."
            )
        dt = self.work_dtype
        lo, di, up, rhs = self.arrays()
        M = xp.zeros((*self.batch_shape, L, w, L, w), dtype=dt, device=self.device)
        for k, A in ((-1, lo), (0, di), (1, up)):
            Ad = s.to_dense(A, w, xp)
            shift = xp.eye(L, k=k, dtype=dt, device=self.device)
            M = M + Ad[..., :, :, None, :] * shift[:, None, :, None]
        return (xp.reshape(M, (*self.batch_shape, L * w, L * w)),
                xp.reshape(rhs, (*self.batch_shape, L * w)))


# ----------------------------------------------------------------------------------------
# Block Thomas algorithm (block LU without pivoting, then back-substitution; Thomas 1949,
# in block form e.g. Golub & Van Loan, "Matrix Computations", §4.5.1).
#
#   forward:  C'_1 = B_1^{-1} C_1,  d'_1 = B_1^{-1} d_1;
#             M_l = B_l - A_l C'_{l-1},  C'_l = M_l^{-1} C_l,  d'_l = M_l^{-1}(d_l - A_l d'_{l-1})
#   backward: x_L = d'_L,  x_l = d'_l - C'_l x_{l+1}
#
# (A = lower, B = diag, C = upper.) 2L dependent steps, one w x w solve each: O(L w^3)
# work, O(L) depth. The reference the parallel solvers are tested against; M_l is a Schur
# complement, so it stays SPD (or diagonally dominant) when the system is.
def _solve_sequential(lo: Any, di: Any, up: Any, rhs: Any, s: Structure, xp: Any) -> Any:
    L = rhs.shape[-2]
    if L == 0:
        return rhs
    ax = s.step_axis
    A, B, C = (_unstack(T, ax, xp) for T in (lo, di, up))
    d = _unstack(rhs, -2, xp)
    Cp: list[Any] = []
    dp: list[Any] = []
    for i in range(L):
        if i == 0:
            M, v = B[0], d[0]
        else:
            M = B[i] - s.compose(A[i], Cp[-1], xp)
            v = d[i] - s.apply(A[i], dp[-1], xp)
        (c,), (y,) = _block_solve(s, M, [C[i]], [v], xp)
        Cp.append(c)
        dp.append(y)
    x = [dp[-1]]
    for i in range(L - 2, -1, -1):
        x.append(dp[i] - s.apply(Cp[i], x[-1], xp))
    return xp.stack(x[::-1], axis=-2)


# Parallel cyclic reduction (Hockney 1965; Hockney & Jesshope, "Parallel Computers",
# 1981, §5.4). Every row eliminates its two neighbours at distance k = 1, 2, 4, ...:
#
#   P_j = B_j^{-1} A_j,  Q_j = B_j^{-1} C_j,  y_j = B_j^{-1} d_j     (all rows at once)
#   A'_i = -A_i P_{i-k}
#   B'_i =  B_i - A_i Q_{i-k} - C_i P_{i+k}
#   C'_i = -C_i Q_{i+k}
#   d'_i =  d_i - A_i y_{i-k} - C_i y_{i+k}
#
# Neighbours outside 1..L are zero blocks (so L need not be a power of two). After
# ceil(log2 L) levels every row couples to nothing, and x_i = B_i^{-1} d_i. Depth
# O(log L), work O(L w^3 log L); each level's rows split into independent tridiagonal
# systems that are Schur complements of the previous ones (SPD stays SPD).
def _solve_pcr(lo: Any, di: Any, up: Any, rhs: Any, s: Structure, xp: Any) -> Any:
    L = rhs.shape[-2]
    if L == 0:
        return rhs
    w = rhs.shape[-1]
    k = 1
    while k < L:
        (P, Q), (y,) = _block_solve(s, di, [lo, up], [rhs], xp)
        Pm, Qm = (_shift_blocks(s, T, k, w, xp, down=True) for T in (P, Q))
        Pp, Qp = (_shift_blocks(s, T, k, w, xp, down=False) for T in (P, Q))
        ym, yp = _shift_vecs(y, k, xp, down=True), _shift_vecs(y, k, xp, down=False)
        rhs = rhs - s.apply(lo, ym, xp) - s.apply(up, yp, xp)
        di = di - s.compose(lo, Qm, xp) - s.compose(up, Pp, xp)
        lo, up = -s.compose(lo, Pm, xp), -s.compose(up, Qp, xp)
        k *= 2
    return _block_solve(s, di, [], [rhs], xp)[1][0]


# Cyclic (odd-even) reduction (Hockney 1965; Buzbee, Golub & Nielson 1970). With rows
# numbered from 0, the even rows j are solved for their own unknown,
#
#   x_j = y_j - P_j x_{j-1} - Q_j x_{j+1},
#   P_j = B_j^{-1} A_j,  Q_j = B_j^{-1} C_j,  y_j = B_j^{-1} d_j,
#
# and substituted into the odd rows i, leaving a tridiagonal system of floor(L/2) rows in
# the odd unknowns (the PCR update with k = 1, on odd rows only). Solve it recursively;
# then the formula above recovers every even unknown in one parallel step. Depth
# 2 log2 L, work O(L w^3) (half the rows are solved at each level): the work-efficient
# choice; the reduced systems are Schur complements (SPD stays SPD).
def _solve_cr(lo: Any, di: Any, up: Any, rhs: Any, s: Structure, xp: Any) -> Any:
    L = rhs.shape[-2]
    if L <= 1:
        return rhs if L == 0 else _block_solve(s, di, [], [rhs], xp)[1][0]
    w = rhs.shape[-1]
    n_e, n_o = (L + 1) // 2, L // 2
    ev, od = slice(0, L, 2), slice(1, L, 2)
    (P, Q), (y,) = _block_solve(s, s.take(di, ev), [s.take(lo, ev), s.take(up, ev)],
                                [rhs[..., ev, :]], xp)
    # odd row 2m+1 has even neighbours 2m (index m) and 2m+2 (index m+1, absent at the end)
    Pl, Ql, yl = s.take(P, slice(0, n_o)), s.take(Q, slice(0, n_o)), y[..., :n_o, :]
    Pr, Qr = (_shift_blocks(s, T, 1, w, xp, down=False) for T in (P, Q))
    yr = _shift_vecs(y, 1, xp, down=False)
    Pr, Qr, yr = s.take(Pr, slice(0, n_o)), s.take(Qr, slice(0, n_o)), yr[..., :n_o, :]
    lo_o, di_o, up_o = (s.take(T, od) for T in (lo, di, up))
    x_odd = _solve_cr(
        -s.compose(lo_o, Pl, xp),
        di_o - s.compose(lo_o, Ql, xp) - s.compose(up_o, Pr, xp),
        -s.compose(up_o, Qr, xp),
        rhs[..., od, :] - s.apply(lo_o, yl, xp) - s.apply(up_o, yr, xp),
        s, xp,
    )
    zero = xp.zeros_like(x_odd[..., :1, :])
    left = xp.concat([zero, x_odd[..., : n_e - 1, :]], axis=-2)  # x_{2m-1}
    right = x_odd if n_o == n_e else xp.concat([x_odd, zero], axis=-2)  # x_{2m+1}
    x_even = y - s.apply(P, left, xp) - s.apply(Q, right, xp)
    both = xp.stack([x_even, right], axis=-2)  # (..., n_e, 2, w)
    both = xp.reshape(both, (*both.shape[:-3], 2 * n_e, w))
    return both[..., :L, :]


TRIDIAGONAL_METHODS = {
    "sequential": _solve_sequential,
    "pcr": _solve_pcr,
    "cr": _solve_cr,
}


def _estimate_costs(system: TridiagonalSystem) -> dict[str, float]:
    """Rough seconds of each method, from the backend's cost model (for choosing).

    Arithmetic per row, in units of ``w^3`` multiply-adds for dense blocks (``w`` for the
    others): block Thomas about 5 (one product, one factorisation and ``w + 1``
    right-hand sides); cyclic reduction about 13 over all its levels; parallel cyclic
    reduction about 17 per level. All of it is batched block arithmetic (the loop's steps
    are matrix-matrix too), so the loop pays its step overhead, not a slower flop rate.
    """
    L, w, s = system.length, system.width, system.structure
    m = get_backend(system.xp).cost_model(system.device)
    batch = math.prod(system.batch_shape)
    levels = max(1, math.ceil(math.log2(max(L, 2))))
    if s.block_ndim == 2:
        unit = batch * (w**3 * m.par_flop_time + m.block_overhead)
    else:
        unit = batch * w * m.elementwise_time
    return {
        "sequential": L * (6 * m.step_overhead + 5 * unit),
        "pcr": levels * (8 * m.level_overhead + 17 * L * unit),
        "cr": 2 * levels * 6 * m.level_overhead + 13 * L * unit,
    }


def choose_tridiagonal_method(system: TridiagonalSystem) -> str:
    """The method ``method="auto"`` uses for ``system``.

    ``"sequential"`` for ``L <= 2`` and for short systems of wide dense blocks (where the
    per-step overhead is small next to the ``w^3`` arithmetic), ``"cr"`` or ``"pcr"``
    otherwise, by a rough cost model of the backend and device.

    Parameters
    ----------
    system : TridiagonalSystem

    Returns
    -------
    str
        One of ``"sequential"``, ``"pcr"``, ``"cr"``.
    """
    if system.length <= 2:
        return "sequential"
    costs = _estimate_costs(system)
    return min(costs, key=costs.__getitem__)


def solve_tridiagonal(system: TridiagonalSystem, *, method: str = "auto") -> Any:
    """Solve a block-tridiagonal system.

    Parameters
    ----------
    system : TridiagonalSystem
        ``lower_l x_{l-1} + diag_l x_l + upper_l x_{l+1} = rhs_l``, ``l = 1..L``.
    method : {"auto", "sequential", "pcr", "cr"}, default "auto"
        ``"sequential"``: the block Thomas algorithm (the reference); ``"pcr"``: Hockney's
        parallel cyclic reduction (fewest parallel steps, ``ceil(log2 L) + 1`` batched block
        solves); ``"cr"``: odd-even cyclic reduction (work-efficient). None pivots across
        rows: use them on SPD or block diagonally dominant systems.

    Returns
    -------
    array, shape (..., L, w)
        ``x_1 .. x_L`` in the system's dtype and namespace.

    Raises
    ------
    InputError
        If ``system`` or ``method`` is invalid.

    Examples
    --------
    >>> import numpy as np
    >>> from pcrsolve.tridiagonal import TridiagonalSystem, solve_tridiagonal
    >>> rng = np.random.default_rng(0)
    >>> J = 0.5 * rng.standard_normal((100, 3, 3)) / np.sqrt(3)
    >>> r = rng.standard_normal((100, 3))
    >>> system = TridiagonalSystem.normal_equations(J, r, damping=0.1)
    >>> x = solve_tridiagonal(system, method="cr")
    >>> bool(np.allclose(x, solve_tridiagonal(system, method="sequential")))
    True
    """
    if not isinstance(system, TridiagonalSystem):
        raise InputError(
            f"`system` must be a pcrsolve TridiagonalSystem; got {type(system).__name__}. "
            "Build one with TridiagonalSystem(lower, diag, upper, rhs, structure=...)."
        )
    if method == "auto":
        method = choose_tridiagonal_method(system)
    if method not in TRIDIAGONAL_METHODS:
        raise InputError(
            f"`method` must be 'auto' or one of {sorted(TRIDIAGONAL_METHODS)}; got {method!r}"
        )
    xp = system.xp
    x = TRIDIAGONAL_METHODS[method](*system.arrays(), system.structure, xp)
    if x.dtype != system.dtype:
        x = xp.astype(x, system.dtype)
    return x
