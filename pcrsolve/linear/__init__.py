"""Linear solvers for block-bidiagonal systems.

=================  =============  ==================  ===============================
method             depth          work (dense)        memory
=================  =============  ==================  ===============================
``"sequential"``   L              L w^2               L w
``"pcr"``          log2 L         L w^3 log2 L        2 (L w^2 + L w)
``"cr"``           2 log2 L       L w^3               2 (L w^2 + L w)
``"chunked"``      2C + log2 L/C  2 L w^2 + L w^3     L w + (L/C) w^2
=================  =============  ==================  ===============================
"""

from __future__ import annotations

import numbers
from typing import Any

from ..backends import get_backend
from ..errors import InputError
from ..system import BidiagonalSystem
from .auto import choose_method, estimate_costs
from .chunked import default_chunk_size, solve_chunked
from .cr import solve_cr
from .pcr import solve_pcr
from .sequential import solve_sequential

__all__ = [
    "METHODS",
    "choose_method",
    "default_chunk_size",
    "estimate_costs",
    "solve_linear",
]

METHODS = {
    "sequential": solve_sequential,
    "pcr": solve_pcr,
    "cr": solve_cr,
    "chunked": solve_chunked,
}


def solve_linear(
    system: BidiagonalSystem, *, method: str = "auto", chunk_size: int | None = None
) -> Any:
    """Solve a block-bidiagonal system: all states of a linear recurrence at once.

    Parameters
    ----------
    system : BidiagonalSystem
        ``x_l = A_l x_{l-1} + b_l`` (or the reverse direction), ``l = 1..L``.
    method : {"auto", "sequential", "pcr", "cr", "chunked", "kernel"}, default "auto"
        ``"sequential"`` is the reference loop; ``"pcr"`` recursive doubling (fewest
        parallel steps); ``"cr"`` work-efficient cyclic reduction; ``"chunked"`` sequential
        inside chunks and parallel across them (least memory); ``"kernel"`` the backend's
        fused kernel (torch + Triton or CuPy on a GPU: diagonal, scalar, or dense with
        w <= 16; NumPy arrays, or torch CPU tensors not recorded by autograd, with numba
        installed: every structure and width).
        ``"auto"`` picks by ``L``, ``w``, structure and backend (see
        :func:`choose_method`), and takes the kernel on a GPU where one applies.
    chunk_size : int, optional
        Steps per chunk for ``method="chunked"`` (default ``ceil(sqrt(L))``).

    Returns
    -------
    array, shape (..., L, w)
        ``x_1 .. x_L`` (``x0`` is not repeated), in the system's dtype and namespace.

    Raises
    ------
    InputError
        If ``method`` or ``chunk_size`` is invalid.

    Examples
    --------
    >>> import numpy as np
    >>> import pcrsolve
    >>> rng = np.random.default_rng(0)
    >>> A = 0.5 * rng.standard_normal((1000, 3, 3)) / np.sqrt(3)
    >>> b = rng.standard_normal((1000, 3))
    >>> system = pcrsolve.BidiagonalSystem(A, b)
    >>> x = pcrsolve.solve_linear(system, method="cr")
    >>> bool(np.allclose(x, pcrsolve.solve_linear(system, method="sequential")))
    True
    """
    if not isinstance(system, BidiagonalSystem):
        raise InputError(
            f"`system` must be a pcrsolve.BidiagonalSystem; got {type(system).__name__}. "
            "Build one with pcrsolve.BidiagonalSystem(A, b, x0, structure=...)."
        )
    if chunk_size is not None:
        if method != "chunked":
            raise InputError(
                f"`chunk_size` applies only to method='chunked' (pass method='chunked'); got "
                f"method={method!r}"
            )
        if isinstance(chunk_size, bool) or not isinstance(chunk_size, numbers.Integral) \
                or chunk_size < 1:
            raise InputError(f"`chunk_size` must be a positive int; got {chunk_size!r}")
        chunk_size = int(chunk_size)
    if method == "auto":
        method = choose_method(system)
    if method == "kernel":
        kernel = get_backend(system.xp).fast_linear(system)
        if kernel is None:
            raise InputError(
                "`method='kernel'` needs a fused kernel for this system: NumPy arrays or "
                "torch CPU tensors that do not require grad, with numba installed (pip "
                "install 'pcrsolve[numba]'), or diagonal or scalar "
                "structure or dense blocks with w <= 16 and either torch tensors on a CUDA "
                "device with Triton installed (or TRITON_INTERPRET=1 on the CPU) and no "
                "input that requires grad, or CuPy arrays on a CUDA device; use 'auto' to "
                "fall back to the generic path"
            )
        return kernel()
    if method not in METHODS:
        raise InputError(
            f"`method` must be 'auto', 'kernel' or one of {sorted(METHODS)}; got {method!r}"
        )
    xp = system.xp
    A, b, x0 = system.forward_arrays()
    if method == "chunked":
        X = solve_chunked(A, b, x0, system.structure, xp, chunk_size)
    else:
        X = METHODS[method](A, b, x0, system.structure, xp)
    if system.reverse:
        X = xp.flip(X, axis=-2)
    if X.dtype != system.dtype:
        X = xp.astype(X, system.dtype)
    return X
