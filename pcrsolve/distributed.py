"""Sequence-parallel solves across processes: each rank owns a consecutive segment of steps.

Algorithm (the two-level scan of Blelloch 1990 across ranks, as in sequence/context
parallelism for linear scans; the Newton outer loop is DeepPCR, Danieli et al. 2023).
Rank ``r`` of ``P`` owns steps ``s_r + 1 .. s_r + n_r`` of the chain
``x_l = A_l x_{l-1} + b_l``.

1. *Reduce.* Composing the affine maps of its segment, every rank computes its
   *summary* ``x_{s_r + n_r} = A^(r) x_{s_r} + b^(r)`` with ``A^(r) = A_{s+n} ... A_{s+1}``
   (``w^2`` numbers, ``w`` for diagonal blocks, one for scalar ones) and ``b^(r)`` the
   segment solved from a zero state (``w`` numbers), per batch element: one compiled
   read-only pass where the library registers one (torch CPU tensors, numba), else a
   pairwise reduction tree (``n_r`` block products, ``log2 n_r`` depth). Only the ranks
   strictly inside the chain need ``A^(r)``: the start folds ``x_0`` in (its ``b^(r)`` is
   its last state) and nobody reads the last rank's summary.
2. *Exchange.* One all-gather of the ``P`` summaries: ``O(P w^2)`` numbers, independent of
   ``L``.
3. *Scan.* Every rank runs the ``P``-step recurrence ``z_{q+1} = A^(q) z_q + b^(q)``,
   ``z_0 = x_0``, up to its own rank: ``z_r = x_{s_r}``, its incoming state.
4. *Local solve.* The segment is solved from ``z_r`` with any single-process method
   (``"auto"``: the compiled loop where registered, else :func:`pcrsolve.solve_linear`).

The reverse direction runs the chain from the last rank down. Newton's method on a
distributed trajectory (:func:`solve`) adds, per iteration, one point-to-point exchange of
the boundary state (``w`` numbers per batch element) and one all-reduce of the per-batch
stopping statistics (so status, iterations and residual history are the same on every
rank). The adjoint (gradients) is the same linear solve, reversed.

Communication sits behind :class:`Communicator` (all-gather, all-reduce, neighbour
shift, broadcast, object all-gather); ``pcrsolve.backends.torch_distributed`` implements
it on ``torch.distributed`` (gloo, NCCL), :class:`ThreadedGroup` runs ``P`` ranks as
threads of one process (for fast tests of the algorithm). ``DistributedParallelSequential``
(torch, in ``pcrsolve.adapters.torch_distributed``; imported on first access, so that this
module does not import torch) splits a stack of ``nn.Module`` blocks over the ranks.
Failures are never left to hang: every collective that follows local work carries an
error flag per rank, so every rank learns of a failure at the same collective and raises
:class:`DistributedError` naming the failing rank(s).
"""

from __future__ import annotations

import importlib
import math
import numbers
import threading
import zlib
from collections.abc import Callable, Sequence
from typing import Any, Protocol, runtime_checkable

from .backends import get_backend, namespace_name
from .blocks import STRUCTURES, Structure
from .direction import (
    all_finite_blocks,
    autodiff_pair,
    finite_sum_blocks,
    jacobian_blocks,
    value_and_blocks,
)
from .errors import ConvergenceError, InputError, PCRSolveError, StepFunctionError
from .factored import Factored
from .linear import METHODS
from .linear import solve_linear as _single_solve_linear
from .namespace import check_finite, device_of, infer_namespace, working_dtype
from .newton import _JacobianOf, jacobian_label
from .newton import solve as _single_solve
from .result import Solution, Status
from .steps import checked, checked_pair
from .stopping import StoppingRule, default_tolerance
from .system import BidiagonalSystem

__all__ = [
    "Communicator",
    "DistributedError",
    "ThreadedGroup",
    "get_communicator",
    "register_communicator",
    "segment_summary",
    "solve",
    "solve_linear",
]

#: Names this module provides from an array library's module on first access (torch is not
#: imported by ``import pcrsolve.distributed``).
_LAZY = {"DistributedParallelSequential":
         "pcrsolve.adapters.torch_distributed:DistributedParallelSequential"}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        module, _, attr = _LAZY[name].partition(":")
        value = getattr(importlib.import_module(module), attr)
        globals()[name] = value
        return value
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


_DIVERGENCE_LIMIT = 1e12  # as pcrsolve.newton: residual growth called divergence
#: Modes of the distributed Newton loop (``"sequential"`` is single-process only).
DISTRIBUTED_MODES = ("newton", "quasi", "picard", "jacobi")
_ALL_MODES = (*DISTRIBUTED_MODES, "sequential")


class DistributedError(PCRSolveError, RuntimeError):
    """A rank failed (or ranks disagree); raised on every rank, naming the failing ranks.

    Attributes
    ----------
    failed_ranks : list of int
        The ranks where the failure happened.
    """

    def __init__(self, message: str, failed_ranks: Sequence[int]) -> None:
        super().__init__(message)
        self.failed_ranks = list(failed_ranks)


@runtime_checkable
class Communicator(Protocol):
    """What the distributed solvers need from a communication library.

    Arrays are those of the solve's namespace (torch tensors for torch.distributed). Every
    method is a collective: every rank of the group calls it, in the same order.
    Optionally, ``all_gather_start(x)`` starts :meth:`all_gather` in the background and
    returns a ``finish()`` that waits for its result (no other collective may run in
    between); the linear solve then overlaps its configuration check with local work.

    Attributes
    ----------
    rank : int
        This process's index in ``0 .. size - 1``; ranks own segments in rank order.
    size : int
        The number of ranks ``P``.
    """

    rank: int
    size: int

    def all_gather(self, x: Any) -> Any:
        """Every rank's ``x`` (same shape and dtype everywhere), stacked: ``(P, *x.shape)``."""

    def all_reduce_max(self, x: Any) -> Any:
        """The elementwise maximum of ``x`` over ranks (``x`` holds no NaN)."""

    def shift(self, x: Any, forward: bool) -> Any:
        """Send ``x`` to the next rank in chain order and return the previous rank's.

        ``forward=True``: to ``rank + 1``, from ``rank - 1``; ``False``: the other way.
        The first rank of the chain receives nothing and returns ``None``.
        """

    def broadcast(self, x: Any, src: int) -> Any:
        """Rank ``src``'s ``x`` on every rank (same shape and dtype everywhere)."""

    def all_gather_object(self, obj: Any) -> list[Any]:
        """Every rank's picklable ``obj``, as a list in rank order."""


# -- finding a communicator -----------------------------------------------------------------
_COMMUNICATORS: dict[str, str | Callable[[Any, Any], Communicator]] = {
    "torch": "pcrsolve.backends.torch_distributed:TorchCommunicator",
}


def register_communicator(name: str, factory: str | Callable[[Any, Any], Communicator]) -> None:
    """Register the communicator used for arrays of the namespace called ``name``.

    Parameters
    ----------
    name : str
        Namespace name (:func:`pcrsolve.backends.namespace_name`).
    factory : str or callable
        ``"module:Class"`` (imported on first use) or a callable ``factory(group, xp)``.
    """
    _COMMUNICATORS[name] = factory


def get_communicator(group: Any, xp: Any) -> Communicator:
    """The communicator for ``group`` and arrays of namespace ``xp``.

    Parameters
    ----------
    group : Communicator, process group or None
        A :class:`Communicator` is used as it is; anything else (``None`` for the default
        group) is handed to the communicator registered for ``xp``'s library.
    xp : module
        The namespace of the solve's arrays.

    Returns
    -------
    Communicator

    Raises
    ------
    InputError
        If no communicator is registered for the library.
    """
    if isinstance(group, Communicator):
        return group
    name = namespace_name(xp)
    entry = _COMMUNICATORS.get(name)
    if entry is None:
        raise InputError(
            f"`group`: distributed solves of {name} arrays need a pcrsolve.distributed."
            f"Communicator passed as group= (registered libraries: {sorted(_COMMUNICATORS)}; "
            "torch tensors use torch.distributed)"
        )
    if isinstance(entry, str):
        module, _, cls = entry.partition(":")
        entry = getattr(importlib.import_module(module), cls)
    return entry(group, xp)


# -- a single-process communicator: P ranks as threads --------------------------------------
class ThreadedGroup:
    """``P`` ranks as threads of one process: the :class:`Communicator` of fast tests.

    Create one, then call :meth:`run` with a function of the rank's communicator; each
    thread gets :meth:`rank_view` (a :class:`Communicator`). Collectives meet at a barrier
    with a timeout, so a rank that never arrives raises instead of hanging.

    Parameters
    ----------
    size : int
        Number of ranks.
    timeout : float, default 60
        Seconds a collective waits for the other ranks.

    Examples
    --------
    >>> import numpy as np
    >>> import pcrsolve
    >>> from pcrsolve.distributed import ThreadedGroup, solve_linear
    >>> A, b = np.full((7, 1), 0.5), np.ones((7, 1))
    >>> parts = [(0, 3), (3, 4), (4, 7)]
    >>> def rank_fn(comm):
    ...     lo, hi = parts[comm.rank]
    ...     system = pcrsolve.BidiagonalSystem(A[lo:hi], b[lo:hi], structure="diagonal")
    ...     return solve_linear(system, group=comm)
    >>> x = np.concatenate(ThreadedGroup(3).run(rank_fn))
    >>> bool(np.allclose(x, pcrsolve.solve_linear(
    ...     pcrsolve.BidiagonalSystem(A, b, structure="diagonal"))))
    True
    """

    def __init__(self, size: int, timeout: float = 60.0) -> None:
        self.size = int(size)
        self._barrier = threading.Barrier(self.size, timeout=timeout)
        self._slots: list[Any] = [None] * self.size

    def _exchange(self, rank: int, value: Any) -> list[Any]:
        self._slots[rank] = value
        self._barrier.wait()
        out = list(self._slots)
        self._barrier.wait()
        return out

    def rank_view(self, rank: int) -> Communicator:
        """The :class:`Communicator` of rank ``rank``."""
        return _ThreadRank(self, rank)

    def run(self, fn: Callable[[Communicator], Any]) -> list[Any]:
        """Run ``fn(comm)`` on every rank in its own thread; the results in rank order.

        Raises
        ------
        Exception
            The exception of the lowest rank that raised one (all ranks are joined).
        """
        results: list[Any] = [None] * self.size
        errors: list[BaseException | None] = [None] * self.size

        def target(r: int) -> None:
            try:
                results[r] = fn(self.rank_view(r))
            except BaseException as exc:  # re-raised below, in the caller's thread
                errors[r] = exc
                self._barrier.abort()

        threads = [threading.Thread(target=target, args=(r,)) for r in range(self.size)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        for exc in errors:
            if exc is not None:
                raise exc
        return results


class _ThreadRank:
    def __init__(self, group: ThreadedGroup, rank: int) -> None:
        self._group, self.rank, self.size = group, rank, group.size

    def all_gather(self, x: Any) -> Any:
        xp = infer_namespace({"x": x})
        return xp.stack(self._group._exchange(self.rank, x), axis=0)

    def all_reduce_max(self, x: Any) -> Any:
        parts = self._group._exchange(self.rank, x)
        xp = infer_namespace({"x": x})
        return xp.max(xp.stack(parts, axis=0), axis=0)

    def shift(self, x: Any, forward: bool) -> Any:
        parts = self._group._exchange(self.rank, x)
        src = self.rank - 1 if forward else self.rank + 1
        return parts[src] if 0 <= src < self.size else None

    def broadcast(self, x: Any, src: int) -> Any:
        return self._group._exchange(self.rank, x)[src]

    def all_gather_object(self, obj: Any) -> list[Any]:
        return self._group._exchange(self.rank, obj)


# -- failures ---------------------------------------------------------------------------------
def _raise_failures(comm: Communicator, failed: list[int], local: BaseException | None,
                    where: str) -> None:
    """Every rank raises :class:`DistributedError` naming ``failed`` (after one exchange of
    the failing ranks' messages, so that every rank can print them)."""
    mine = None if local is None else f"{type(local).__name__}: {local}"
    messages = comm.all_gather_object(mine)
    detail = "; ".join(f"rank {q}: {messages[q] or 'failed'}" for q in failed)
    ranks = ", ".join(map(str, failed))
    err = DistributedError(
        f"pcrsolve.distributed ({where}) failed on rank(s) {ranks} (this is rank "
        f"{comm.rank} of {comm.size}): {detail}", failed)
    if local is not None:
        raise err from local
    raise err


class _Guard:
    """Runs a rank's local work, remembering its first exception instead of raising it, so
    that the rank still takes part in the collectives and reports the failure there."""

    def __init__(self) -> None:
        self.exc: BaseException | None = None

    def __call__(self, fn: Callable[..., Any], *args: Any,
                 fallback: Callable[..., Any]) -> Any:
        """``fn(*args)``; after a failure (now or earlier) ``fallback(*args)`` instead."""
        if self.exc is None:
            try:
                return fn(*args)
            except Exception as exc:
                self.exc = exc
        return fallback(*args)


def _check_config(comm: Communicator, config: dict[str, Any], local_error: Exception | None,
                  where: str) -> list[dict[str, Any]]:
    """One object all-gather of every rank's configuration; raise on every rank if a rank
    failed its own checks or the configurations disagree."""
    gathered = comm.all_gather_object(
        (config, None if local_error is None else f"{type(local_error).__name__}: "
         f"{local_error}"))
    failed = [q for q, (_, e) in enumerate(gathered) if e is not None]
    if failed:
        detail = "; ".join(f"rank {q}: {gathered[q][1]}" for q in failed)
        err = DistributedError(
            f"pcrsolve.distributed ({where}): invalid input on rank(s) "
            f"{', '.join(map(str, failed))} (this is rank {comm.rank} of {comm.size}): {detail}",
            failed)
        if local_error is not None:
            raise err from local_error
        raise err
    configs = [c for c, _ in gathered]
    for key in configs[0]:
        if key.startswith("_"):
            continue
        values = [c[key] for c in configs]
        if any(v != values[0] for v in values):
            shown = ", ".join(f"rank {q}: {v!r}" for q, v in enumerate(values))
            bad = [q for q, v in enumerate(values) if v != values[0]]
            raise DistributedError(
                f"pcrsolve.distributed ({where}): the ranks disagree on `{key}` ({shown}); "
                "every rank must pass the same width, dtype, batch shape and options",
                bad)
    return configs


def _configs_agree(comm: Communicator, config: dict[str, Any], local_error: Exception | None,
                   xp: Any, device: Any) -> bool:
    """The configuration check in one fixed-size all-gather (an error flag and a checksum of
    the configuration per rank): True if no rank failed and all agree; otherwise every rank
    gets False and runs :func:`_check_config` for the message. Cheaper than the object
    all-gather (one small collective, no pickling) for the common case."""
    return _configs_agree_start(comm, config, local_error, xp, device)()


def _configs_agree_start(comm: Communicator, config: dict[str, Any],
                         local_error: Exception | None, xp: Any, device: Any
                         ) -> Callable[[], bool]:
    """:func:`_configs_agree`, started: returns ``finish()`` which gives its answer.

    With a communicator that has ``all_gather_start`` (torch.distributed) the all-gather
    runs in the background meanwhile, so local work can hide its latency; with others it
    is done at once.
    """
    key = repr(sorted((k, v) for k, v in config.items() if not k.startswith("_")))
    mine = xp.asarray([1.0 if local_error is not None else 0.0,
                       float(zlib.crc32(key.encode()))], dtype=xp.float64, device=device)
    start = getattr(comm, "all_gather_start", None)
    if start is None:
        done = comm.all_gather(mine)
        pending: Callable[[], Any] = lambda: done  # noqa: E731
    else:
        pending = start(mine)

    def finish() -> bool:
        got = _to_list(xp.reshape(pending(), (-1,)), xp)
        flags, sums = got[0::2], got[1::2]
        return not any(flags) and all(c == sums[0] for c in sums)

    return finish


# -- the linear solve ---------------------------------------------------------------------------
def segment_summary(A: Any, b: Any, structure: Structure, xp: Any) -> tuple[Any, Any]:
    """The affine map of a whole (forward) segment, by a pairwise reduction tree.

    Parameters
    ----------
    A : array, shape (..., n, w, w) / (..., n, w) / (..., n)
        The blocks, ``n >= 1``.
    b : array, shape (..., n, w)
    structure : Structure
    xp : module

    Returns
    -------
    A_seg : array, shape (..., w, w) / (..., w) / (...)
        ``A_n ... A_1``.
    b_seg : array, shape (..., w)
        The last state of the segment solved from a zero state.
    """
    s = structure
    n = b.shape[-2]
    while n > 1:
        half = n // 2
        A_even, A_odd = s.take(A, slice(0, 2 * half, 2)), s.take(A, slice(1, 2 * half, 2))
        b_even, b_odd = b[..., 0:2 * half:2, :], b[..., 1:2 * half:2, :]
        A2 = s.compose(A_odd, A_even, xp)
        b2 = s.apply(A_odd, b_even, xp) + b_odd
        if n % 2:
            A2 = s.concat([A2, s.take(A, slice(n - 1, n))], xp)
            b2 = xp.concat([b2, b[..., n - 1:n, :]], axis=-2)
        A, b, n = A2, b2, half + n % 2
    return s.take(A, 0), b[..., 0, :]


def _incoming(system: BidiagonalSystem, comm: Communicator, x0: Any,
              failure: BaseException | None = None, summary: tuple[Any, Any] | None = None
              ) -> Any:
    """The state entering this rank's segment (steps 1-3 of the module docstring).

    The all-gathered buffer carries one error flag per rank: a rank whose local work
    failed (``failure``) sends the flag, and every rank raises there. ``summary``: this
    segment's ``(A_seg, b_seg)`` if already known (``b_seg`` from ``x0`` on the chain's
    start), else it is computed here.
    """
    xp, s = system.xp, system.structure
    w, batch = system.width, system.batch_shape
    A, b, _ = system.forward_arrays()
    dev = device_of(b)
    m_a = math.prod(batch) * math.prod(s.block_shape(w))
    m_b = math.prod(batch) * w
    start, end = _is_start(comm, system.reverse), _is_end(comm, system.reverse)
    if failure is None:
        try:
            zero_A = xp.zeros((*batch, *s.block_shape(w)), dtype=b.dtype, device=dev)
            if end:  # the scan never reads the chain's last summary: nothing to compute
                A_seg, b_seg = zero_A, xp.zeros((*batch, w), dtype=b.dtype, device=dev)
            elif summary is not None:
                A_seg = zero_A if start else xp.broadcast_to(summary[0], zero_A.shape)
                b_seg = summary[1]
            else:
                # the chain's start folds x0 in: its map sends anything to its last state,
                # so the other ranks never need x0 (z = 0 enters the scan) and its own
                # A_seg is never formed
                A_seg, b_seg = _summary(A, b, x0 if start else None, s, batch, xp)
                A_seg = zero_A if start else xp.broadcast_to(A_seg, zero_A.shape)
            buf = xp.concat([xp.zeros((1,), dtype=b.dtype, device=dev),
                             xp.reshape(A_seg, (m_a,)), xp.reshape(b_seg, (m_b,))])
        except Exception as exc:
            failure = exc
    if failure is not None:
        buf = xp.zeros((1 + m_a + m_b,), dtype=b.dtype, device=dev)
        buf = xp.concat([xp.ones((1,), dtype=b.dtype, device=dev), buf[1:]])
    everything = comm.all_gather(buf)  # (P, 1 + m_a + m_b)
    flags = [float(v) for v in _to_list(everything[:, 0], xp)]
    failed = [q for q, f in enumerate(flags) if f != 0.0]
    if failed:
        _raise_failures(comm, failed, failure, "linear solve")
    P, r = comm.size, comm.rank
    if start:
        return x0
    order = range(P - 1, r, -1) if system.reverse else range(r)
    z = xp.zeros_like(x0)
    for q in order:
        A_q = xp.reshape(everything[q, 1:1 + m_a], (*batch, *s.block_shape(w)))
        b_q = xp.reshape(everything[q, 1 + m_a:], (*batch, w))
        z = s.apply(A_q, z, xp) + b_q
    return z


def _to_list(x: Any, xp: Any) -> list[float]:
    return get_backend(xp).host_floats(x)


def _local_kernels(xp: Any) -> Any | None:
    """The compiled local passes registered for ``xp``'s library (None: generic only)."""
    name = namespace_name(xp)
    if name not in _KERNELS:
        entry = _LOCAL_KERNELS.get(name)
        if entry is None:
            _KERNELS[name] = None
        else:
            module, _, fn = entry.partition(":")
            _KERNELS[name] = getattr(importlib.import_module(module), fn)()
    return _KERNELS[name]


#: Compiled local passes (reduce and solve) per library, ``"module:factory"`` imported on
#: first use; each pass returns None where it does not apply (then the generic path runs).
_LOCAL_KERNELS = {"torch": "pcrsolve.backends.torch_distributed:local_kernels"}
_KERNELS: dict[str, Any] = {}


def _summary(A: Any, b: Any, x0: Any | None, s: Structure, batch: tuple[int, ...],
             xp: Any) -> tuple[Any, Any]:
    """``(A_seg, b_seg)`` of a forward segment, ``b_seg`` run from ``x0`` (None: zero);
    with ``x0`` given, ``A_seg`` is not needed and may be None."""
    kernels = _local_kernels(xp)
    if kernels is not None:
        got = kernels.summary(A, b, x0, s.block_ndim, batch, x0 is None)
        if got is not None:
            return got
    A_seg, b_seg = segment_summary(A, b, s, xp)
    if x0 is not None:
        b_seg = s.apply(xp.broadcast_to(A_seg, (*batch, *s.block_shape(b.shape[-1]))), x0,
                        xp) + b_seg
    return A_seg, b_seg


def _local_solve(system: BidiagonalSystem, z: Any, method: str, used: list | None = None
                 ) -> Any:
    """The segment solved from its incoming state ``z`` by a single-process method
    (``"auto"``: the compiled local pass where one applies); appends the method's name to
    ``used``."""
    if method == "auto":
        kernels = _local_kernels(system.xp)
        if kernels is not None:
            x = kernels.solve(system.A, system.b, z, system.structure.block_ndim,
                              system.reverse, tuple(system.batch_shape))
            if x is not None:
                if used is not None:
                    used.append("kernel")
                return x
    if used is not None:
        from .linear import choose_method

        used.append(choose_method(system) if method == "auto" else method)
    local = BidiagonalSystem(system.A, system.b, z, structure=system.structure.name,
                             reverse=system.reverse, check_finite=False, xp=system.xp)
    return _single_solve_linear(local, method=method)


def _solve_segment(system: BidiagonalSystem, comm: Communicator, method: str,
                   failure: BaseException | None = None,
                   before_exchange: Callable[[], None] | None = None) -> tuple[Any, Any]:
    """This rank's states and its incoming state (without the configuration check).

    ``before_exchange()`` (the pending configuration check) runs after the local first
    pass and before the first collective of the solve.
    """
    x0 = system.forward_arrays()[2]
    if failure is None and method == "auto":
        done = _scan_first(system, comm, x0, before_exchange)
        if done is not None:
            return done
    if before_exchange is not None:
        before_exchange()
    z = _incoming(system, comm, x0, failure)
    return _local_solve(system, z, method), z


def _scan_first(system: BidiagonalSystem, comm: Communicator, x0: Any,
                before_exchange: Callable[[], None] | None = None) -> tuple[Any, Any] | None:
    """The compiled path for elementwise blocks: scan first, exchange, then fix a prefix.

    The chain's first rank solves its segment from ``x0`` at once; every other rank scans
    its segment from a zero state meanwhile (``scan_decay`` of the local kernels), keeping
    the product of its blocks. One all-gather of the segments' maps then gives each rank
    its entering state ``z``, and only the first ``K`` steps (until the product decayed
    below ``2^-960``; all of them if it did not within a quarter of the segment) are
    scanned again from ``z``. Each rank reads its segment about once instead of twice
    (a reduce pass, then the solve). None where the kernels do not apply.
    """
    kernels = _local_kernels(system.xp)
    s = system.structure
    if kernels is None or s.block_ndim == 2:
        return None
    batch, rev = tuple(system.batch_shape), system.reverse
    start = _is_start(comm, rev)
    try:
        if start:
            x = kernels.solve(system.A, system.b, x0, s.block_ndim, rev, batch)
            got = None if x is None else (None, x[..., 0 if rev else -1, :], 0)
        else:
            got = kernels.scan_decay(system.A, system.b, s.block_ndim, rev, batch)
            if got is not None:
                x, got = got[0], got[1:]
    except Exception:  # the generic path runs it again and reports it, naming the rank
        return None
    # ranks may take different paths (a rank whose tensors require grad takes the generic
    # one): both make exactly one all-gather of the same maps in _incoming
    if got is None:
        return None
    A_seg, b_seg, K = got
    if before_exchange is not None:
        before_exchange()
    z = _incoming(system, comm, x0, None, summary=(A_seg, b_seg))
    if K:
        L = system.length
        steps = slice(L - K, L) if rev else slice(0, K)
        head = kernels.solve(s.take(system.A, steps), system.b[..., steps, :], z,
                             s.block_ndim, rev, batch)
        x[..., steps, :] = head
    return x, z


def _is_start(comm: Communicator, reverse: bool) -> bool:
    return comm.rank == (comm.size - 1 if reverse else 0)


def _is_end(comm: Communicator, reverse: bool) -> bool:
    """The chain's last rank: its summary is never read."""
    return comm.rank == (0 if reverse else comm.size - 1)


def solve_linear(system: BidiagonalSystem, *, group: Any = None, method: str = "auto") -> Any:
    """Solve a block-bidiagonal system whose steps are spread over the ranks of a group.

    Every rank calls it (SPMD) with its own consecutive segment of the chain: rank 0 the
    first steps, then rank 1, ... (for ``reverse=True`` the chain starts on the last rank).

    Parameters
    ----------
    system : BidiagonalSystem
        This rank's segment, ``L_r >= 1`` steps: blocks ``(..., L_r, w, w)`` /
        ``(..., L_r, w)`` / ``(..., L_r)``, right-hand sides ``(..., L_r, w)``. ``x0`` is read
        on the rank where the chain starts; the others' values are ignored. Width,
        structure, direction, batch shape and dtype must agree across ranks.
    group : torch.distributed.ProcessGroup, Communicator or None
        ``None``: the default process group of the arrays' library (torch.distributed).
    method : str, default "auto"
        The single-process method of the local solve (see :func:`pcrsolve.solve_linear`).

    Returns
    -------
    array, shape (..., L_r, w)
        This rank's states. With one rank, exactly :func:`pcrsolve.solve_linear`.

    Raises
    ------
    InputError
        If ``system`` is not a BidiagonalSystem or has no steps.
    DistributedError
        On every rank, if a rank's input is invalid or the ranks disagree (width,
        structure, direction, batch shape, dtype), naming the ranks.

    Notes
    -----
    Communication: one all-gather of ``2 P`` numbers (an error flag and a checksum of the
    configuration; an object all-gather follows only when they disagree, for the message)
    and one all-gather of ``P (w^2 + w + 1)`` numbers per batch element (dense blocks),
    independent of ``L``.
    """
    if not isinstance(system, BidiagonalSystem):
        raise InputError(
            f"`system` must be a pcrsolve.BidiagonalSystem; got {type(system).__name__}")
    comm = get_communicator(group, system.xp)
    if comm.size == 1:
        return _single_solve_linear(system, method=method)
    error = None
    if system.length < 1:
        error = InputError(f"`system` must hold at least one step on every rank; got L = "
                           f"{system.length} on rank {comm.rank}")
    elif method not in ("auto", "kernel") and method not in METHODS:
        error = InputError(f"`method` must be 'auto', 'kernel' or one of {sorted(METHODS)}; "
                           f"got {method!r}")
    config = {"width": system.width, "structure": system.structure.name,
              "reverse": system.reverse, "batch shape": tuple(system.batch_shape),
              "dtype": str(system.dtype), "library": namespace_name(system.xp),
              "_length": system.length}
    agree = _configs_agree_start(comm, config, error, system.xp, system.device)

    def checked() -> None:
        if not agree():
            _check_config(comm, config, error, "solve_linear")  # raises, naming what differs

    if error is not None:
        checked()
    # the local first pass runs while the configuration check is in flight
    return _solve_segment(system, comm, method, before_exchange=checked)[0]


# -- Newton on a distributed trajectory -----------------------------------------------------------
def _batch_max(x: Any, xp: Any) -> Any:
    return xp.max(xp.abs(x), axis=(-2, -1))


def _jacobian_source(mode: str, step: Callable, jacobian: Callable | None,
                     jacobian_structure: str, jvp: Callable | None, xp: Any
                     ) -> tuple[Callable[[Any, Any], Any] | None, str]:
    """The blocks of each mode (:func:`pcrsolve.direction.jacobian_blocks`), with
    :class:`~pcrsolve.Factored` blocks made dense: the distributed linear solve takes
    dense, diagonal or scalar blocks only."""
    provider, structure = jacobian_blocks(mode, step, jacobian, jacobian_structure, jvp,
                                          get_backend(xp), xp)
    if provider is None:
        return None, structure

    def blocks(X: Any, l: Any) -> Any:
        J = provider(X, l)
        return J.dense(xp) if isinstance(J, Factored) else J

    return blocks, structure


def _value_and_blocks(mode: str, step: Callable, jacobian: Callable | None,
                      jvp: Callable | None, value_and_jacobian: Callable | None,
                      jacobian_structure: str, xp: Any
                      ) -> tuple[Callable, str, Callable] | None:
    """``(jacobian, jacobian_structure, pair)`` when an iteration's values and blocks come
    from one call (the user's ``value_and_jacobian``, or the backend's autodiff pair, as in
    :func:`pcrsolve.solve`); None otherwise. ``jacobian`` gives blocks alone, for states
    whose value is known (batch elements that stopped)."""
    value_and_jacobian, jacobian_structure = autodiff_pair(
        mode, step, jacobian, jvp, value_and_jacobian, jacobian_structure, get_backend(xp))
    pair = value_and_blocks(mode, value_and_jacobian, jacobian_structure, xp)
    if pair is None:
        return None
    return (jacobian if jacobian is not None else _JacobianOf(value_and_jacobian),
            jacobian_structure, pair)


def _local_checks(step: Any, x0: Any, length: Any, mode: str, jacobian: Any,
                  jacobian_structure: str, jvp: Any, tol: Any, atol: Any, max_iter: Any,
                  init: Any, linear_method: str, value_and_jacobian: Any = None) -> None:
    if not callable(step):
        raise InputError(f"`step` must be callable as step(x_prev, l); got {type(step).__name__}")
    if (isinstance(length, bool) or not isinstance(length, numbers.Integral)
            or length < 1):
        raise InputError(f"`length` must be an int >= 1 (this rank's number of steps); got "
                         f"{length!r}")
    if mode not in _ALL_MODES:
        raise InputError(f"`mode` must be one of {_ALL_MODES}; got {mode!r}")
    if mode not in DISTRIBUTED_MODES:
        raise InputError(f"`mode`={mode!r} is not supported across ranks (world size > 1); "
                         f"use one of {DISTRIBUTED_MODES}")
    if jacobian_structure not in ("dense", "diagonal"):
        raise InputError(
            f"`jacobian_structure` must be 'dense' or 'diagonal'; got {jacobian_structure!r}")
    for name, fn in (("jacobian", jacobian), ("jvp", jvp),
                     ("value_and_jacobian", value_and_jacobian)):
        if fn is not None and not callable(fn):
            raise InputError(f"`{name}` must be callable; got {type(fn).__name__}")
    if x0.ndim < 1 or x0.shape[-1] < 1:
        raise InputError(f"`x0` must have shape (..., w) with w >= 1; got {tuple(x0.shape)}")
    for name, v in (("tol", tol), ("atol", atol)):
        if v is not None and (isinstance(v, bool) or not isinstance(v, numbers.Real)
                              or not math.isfinite(v) or not v >= 0):
            raise InputError(f"`{name}` must be a number, finite and >= 0; got {v!r}")
    if max_iter is not None and (isinstance(max_iter, bool) or not isinstance(max_iter, int)
                                 or max_iter < 0):
        raise InputError(f"`max_iter` must be an int >= 0; got {max_iter!r}")
    if linear_method not in ("auto", "kernel") and linear_method not in METHODS:
        raise InputError(f"`linear_method` must be 'auto', 'kernel' or one of "
                         f"{sorted(METHODS)}; got {linear_method!r}")
    if init is not None:
        expect = (*x0.shape[:-1], length, x0.shape[-1])
        if tuple(init.shape) != expect:
            raise InputError(f"`init` must have shape {expect} (batch of x0, this rank's "
                             f"length, w); got {tuple(init.shape)}")


class _Trajectory:
    """What a finished distributed solve knows beyond its Solution (for the adjoint)."""

    def __init__(self, x_in: Any, offset: int, total: int, lengths: list[int]) -> None:
        self.x_in, self.offset, self.total, self.lengths = x_in, offset, total, lengths


#: The autograd integration of a distributed solve, per library (imported on first use).
_ADJOINTS = {"torch": "pcrsolve.backends.torch_distributed:differentiable_solve"}

#: Why the distributed Newton loop runs without the trust-region globalisation.
_NO_TRUST_REGION = (
    "the trust-region globalisation is not available across ranks: its Levenberg-Marquardt "
    "steps solve the block-tridiagonal normal equations (G^T G + lambda I) of the whole "
    "trajectory, which pcrsolve does not yet split over ranks, so pcrsolve.distributed.solve "
    "runs the plain iteration (globalisation='none', the same at every world size; with the "
    "pinned prefix it still converges in at most L iterations). Pass globalisation='none' "
    "(or leave it unset), or solve on one process with pcrsolve.solve"
)


def _option_error(mode: Any, globalisation: Any, damping: Any, fallback: Any
                  ) -> InputError | None:
    """The options every world size refuses (so a program runs the same on 1 and P ranks)."""
    if globalisation is not None and globalisation not in ("trust-region", "none"):
        return InputError(f"`globalisation` must be 'none' (or 'trust-region', which is "
                          f"refused across ranks); got {globalisation!r}")
    if globalisation == "trust-region":
        return InputError(f"`globalisation`='trust-region': {_NO_TRUST_REGION}")
    if damping is not None and not isinstance(damping, bool):
        return InputError(f"`damping` must be True or False (or use globalisation=...); "
                          f"got {damping!r}")
    if damping:
        return InputError(f"`damping`=True means globalisation='trust-region': "
                          f"{_NO_TRUST_REGION}")
    if not isinstance(fallback, bool):
        return InputError(f"`fallback` must be True or False; got {fallback!r}")
    if fallback:
        return InputError(
            "`fallback`=True is not available in pcrsolve.distributed.solve: the sequential "
            "fallback would run the whole chain on one rank; check the returned status "
            "(throw=False) and fall back yourself")
    if isinstance(mode, str) and mode == "sequential":
        return InputError(
            "`mode`='sequential' is not available in pcrsolve.distributed.solve (the loop "
            f"cannot be split over ranks); use one of {DISTRIBUTED_MODES}")
    return None


def solve(
    step: Callable[[Any, Any], Any],
    x0: Any,
    length: int,
    *,
    group: Any = None,
    mode: str = "newton",
    jacobian: Callable[[Any, Any], Any] | None = None,
    jacobian_structure: str = "dense",
    jvp: Callable[[Any, Any, Any], Any] | None = None,
    value_and_jacobian: Callable[[Any, Any], Any] | None = None,
    tol: float | None = None,
    atol: float | None = None,
    max_iter: int | None = None,
    init: Any | None = None,
    globalisation: str | None = None,
    damping: bool | None = None,
    linear_method: str = "auto",
    fallback: bool = False,
    throw: bool = True,
    params: Any | None = None,
    check_inputs: bool = True,
) -> Solution:
    """Newton-PCR on a trajectory whose steps are spread over the ranks of a group.

    Every rank calls it (SPMD) for its own consecutive segment of steps (rank 0 the
    first). Per iteration each rank evaluates its steps and their Jacobians, the ranks solve
    the Newton system together (:func:`solve_linear`'s algorithm), exchange one boundary
    state with the neighbour and all-reduce the stopping statistics.

    The iteration is :func:`pcrsolve.solve`'s with ``globalisation="none"`` (the same
    direction, pinned prefix and stopping rule), at every world size: the trust-region
    globalisation, :func:`pcrsolve.solve`'s default, needs a block-tridiagonal solve of the
    whole trajectory that is not split over ranks, and is refused (see below). Where the
    trust-region solve accepts every Newton step (problems Newton handles from the initial
    guess), the two give the same iterates.

    Parameters
    ----------
    step : callable
        ``step(x_prev, l)`` as for :func:`pcrsolve.solve`, called with the **global**
        0-based indices of this rank's steps (rank ``r`` gets
        ``offset_r .. offset_r + length - 1``, ``offset_r`` the lengths of ranks ``< r``).
    x0 : array, shape (..., w)
        The initial state, read on rank 0; other ranks pass an array of the same shape and
        dtype (values ignored; it is broadcast from rank 0).
    length : int
        This rank's number of steps, ``>= 1`` (may differ between ranks).
    group : torch.distributed.ProcessGroup, Communicator or None
        ``None``: the default process group.
    mode : {"newton", "quasi", "picard", "jacobi"}, default "newton"
    jacobian, jacobian_structure, jvp, value_and_jacobian, tol, atol, linear_method, check_inputs
        As for :func:`pcrsolve.solve` (the functions get global indices;
        ``value_and_jacobian`` gives each iteration's values and blocks in one call).
    max_iter : int, optional
        Default: the total number of steps over all ranks.
    init : array, shape (..., length, w), optional
        This rank's segment of the initial guess (warm start).
    globalisation : {"none"}, optional
        Only ``"none"`` (the default here); ``"trust-region"`` raises (every world size).
    damping : bool, optional
        ``False`` or unset; ``True`` (trust-region) raises.
    fallback : bool, default False
        ``True`` raises: there is no distributed sequential fallback.
    throw : bool, default True
        Raise :class:`~pcrsolve.ConvergenceError` on every rank if not converged.
    params : sequence of tensors or torch.nn.Module, optional
        torch: this rank's tensors that ``step`` depends on. The states are then
        differentiable: ``loss.backward()`` on every rank (each rank its local loss; every
        rank must call it, the backward pass is collective) gives each rank the gradients
        of its own params and rank 0 the gradient of ``x0``, through a distributed adjoint.

    Returns
    -------
    Solution
        ``states`` of shape ``(..., length, w)`` (this rank's segment); ``status``,
        ``iterations``, ``residuals``, ``updates`` and ``converged_mask`` are identical on
        every rank; ``globalisation`` is ``"none"``; ``lyapunov_exponent`` is ``None``
        (it would need the Jacobians of every rank). With one rank, exactly
        ``pcrsolve.solve(..., globalisation="none")``.

    Raises
    ------
    InputError
        With one rank, for invalid or unsupported options (naming them).
    DistributedError
        With more ranks, on every rank when a rank's input is invalid or unsupported
        (``globalisation="trust-region"``, ``damping=True``, ``fallback=True``,
        ``mode="sequential"``), the ranks' configurations differ (width, dtype, batch
        shape, mode, options), or the step/Jacobian raised on a rank; the message names the
        rank(s) and the cause.
    ConvergenceError
        If ``throw`` and the iteration did not converge (on every rank).
    """
    xp = infer_namespace({"x0": x0, "init": init})
    comm = get_communicator(group, xp)
    option_error = _option_error(mode, globalisation, damping, fallback)
    options = dict(mode=mode, jacobian=jacobian, jacobian_structure=jacobian_structure,
                   jvp=jvp, value_and_jacobian=value_and_jacobian, tol=tol, atol=atol,
                   max_iter=max_iter, init=init, linear_method=linear_method, throw=throw,
                   check_inputs=check_inputs)
    if comm.size == 1:
        if option_error is not None:
            raise option_error
        return _single_solve(step, x0, length, params=params, globalisation="none",
                             **options)
    options["option_error"] = option_error
    backend = get_backend(xp)
    if params is not None or backend.requires_grad(x0):
        entry = _ADJOINTS.get(namespace_name(xp))
        if entry is None:
            raise InputError(f"`params`: gradients through a distributed solve need torch "
                             f"tensors; got {namespace_name(xp)} arrays")
        module, _, name = entry.partition(":")
        differentiable_solve = getattr(importlib.import_module(module), name)
        return differentiable_solve(_solve_impl, step, x0, length, comm, params, options)
    return _solve_impl(step, x0, length, comm, **options)[0]


def _solve_impl(step: Callable, x0: Any, length: int, comm: Communicator, *,
                mode: str, jacobian: Callable | None, jacobian_structure: str,
                jvp: Callable | None, tol: float | None, atol: float | None,
                max_iter: int | None, init: Any | None, linear_method: str, throw: bool,
                check_inputs: bool, option_error: Exception | None = None,
                value_and_jacobian: Callable | None = None
                ) -> tuple[Solution, _Trajectory]:
    """The distributed Newton loop; also returns what the adjoint needs."""
    xp = infer_namespace({"x0": x0, "init": init})
    with get_backend(xp).quiet_float_errors():
        return _iterate(step, x0, length, comm, xp, mode=mode, jacobian=jacobian,
                        jacobian_structure=jacobian_structure, jvp=jvp, tol=tol, atol=atol,
                        max_iter=max_iter, init=init, linear_method=linear_method,
                        throw=throw, check_inputs=check_inputs,
                        option_error=option_error, value_and_jacobian=value_and_jacobian)


def _iterate(step: Callable, x0: Any, length: int, comm: Communicator, xp: Any, *,
             mode: str, jacobian: Callable | None, jacobian_structure: str,
             jvp: Callable | None, tol: float | None, atol: float | None,
             max_iter: int | None, init: Any | None, linear_method: str, throw: bool,
             check_inputs: bool, option_error: Exception | None = None,
             value_and_jacobian: Callable | None = None
             ) -> tuple[Solution, _Trajectory]:
    P, r = comm.size, comm.rank
    error: Exception | None = None
    try:
        if option_error is not None:
            raise option_error
        _local_checks(step, x0, length, mode, jacobian, jacobian_structure, jvp, tol, atol,
                      max_iter, init, linear_method, value_and_jacobian)
        length = int(length)
        work, out_dtype = working_dtype({"x0": x0, "init": init}, xp)
        if check_inputs:
            check_finite({"init": init} if r else {"x0": x0, "init": init}, xp)
    except Exception as exc:
        error = exc
        work = out_dtype = getattr(x0, "dtype", None)
    config = {
        "width": int(x0.shape[-1]) if getattr(x0, "ndim", 0) else None,
        "batch shape": tuple(x0.shape[:-1]) if getattr(x0, "ndim", 0) else None,
        "dtype": str(getattr(x0, "dtype", None)), "library": namespace_name(xp),
        "mode": mode, "tol": tol, "atol": atol, "max_iter": max_iter,
        "linear_method": linear_method, "jacobian given": jacobian is not None,
        "jacobian_structure": jacobian_structure, "jvp given": jvp is not None,
        "value_and_jacobian given": value_and_jacobian is not None,
        "init given": init is not None, "_length": length,
    }
    configs = _check_config(comm, config, error, "solve")
    lengths = [int(c["_length"]) for c in configs]
    offset, L = sum(lengths[:r]), sum(lengths)
    n, w = length, int(x0.shape[-1])
    batch = tuple(x0.shape[:-1])
    dev = device_of(x0)
    rtol = default_tolerance(work, xp) if tol is None else float(tol)
    max_iter = L if max_iter is None else max_iter
    idx = xp.arange(offset, offset + n, dtype=xp.int64, device=dev)
    x0w = comm.broadcast(xp.astype(x0, work, copy=True), src=0)
    stepc = checked(step, "step", xp)
    user_jacobian = jacobian_label(
        _JacobianOf(value_and_jacobian) if value_and_jacobian is not None and jacobian is None
        else jacobian, jvp)
    pair = _value_and_blocks(mode, step, jacobian, jvp, value_and_jacobian, jacobian_structure,
                             xp)
    if pair is not None:
        jacobian, jacobian_structure, pair_fn = pair
        pairc = checked_pair(pair_fn, user_jacobian or "step", xp)
    jac, structure = _jacobian_source(mode, step, jacobian, jacobian_structure, jvp, xp)
    s = STRUCTURES[structure]
    guard = _Guard()
    nb = math.prod(batch)
    # the blocks at the last X_prev that was evaluated with value and blocks together
    cached: list[Any] = [None, None]

    if nb == 0:  # nothing to solve
        empty = xp.zeros((*batch, n, w), dtype=out_dtype, device=dev)
        return (Solution(empty, Status.CONVERGED, 0, mode=mode, linear_method="none"),
                _Trajectory(x0w, offset, L, lengths))

    def boundary(X: Any) -> Any:
        got = comm.shift(xp.asarray(X[..., -1, :], copy=True), forward=True)
        return x0w if got is None else got

    def evaluate(X: Any, x_in: Any) -> tuple[Any, Any, Any]:
        Xprev = xp.concat([x_in[..., None, :], X[..., :-1, :]], axis=-2)
        if pair is not None:
            F, J = pairc(Xprev, idx, expect=(*batch, n, w), dtype=work)
            cached[:] = [Xprev, J]
        else:
            F = stepc(Xprev, idx, expect=(*batch, n, w), dtype=work)
        return Xprev, F, F - X

    def reduce_stats(parts: list[Any], nonfinite: bool, local_rnorm: Any
                     ) -> tuple[list[Any], Any, Any]:
        """One all-reduce (max) of per-batch statistics, per-rank error flags and, per rank
        and batch element, whether the rank's segment has a nonzero residual (``local_rnorm``
        its ``max |R|``): the pinned prefix crosses into this rank only where every earlier
        rank's segment is exact."""
        flags = [0.0] * (2 * P)
        flags[r] = 1.0 if guard.exc is not None else 0.0
        flags[P + r] = 1.0 if nonfinite else 0.0
        inf = xp.full((nb,), math.inf, dtype=work, device=dev)
        cleaned = [xp.where(xp.isnan(p), inf, p) for p in
                   (xp.reshape(q, (nb,)) for q in parts)]
        inexact = xp.zeros((P, nb), dtype=work, device=dev)
        mine = xp.astype(~(xp.reshape(local_rnorm, (nb,)) <= 0.0), work)
        inexact = xp.where(xp.arange(P, device=dev)[:, None] == r, mine[None, :], inexact)
        buf = xp.concat([*cleaned, xp.asarray(flags, dtype=work, device=dev),
                         xp.reshape(inexact, (P * nb,))])
        out = comm.all_reduce_max(buf)
        k = nb * len(parts)
        host = _to_list(out[k:k + 2 * P], xp)
        failed = [q for q in range(P) if host[q] != 0.0]
        if failed:
            _raise_failures(comm, failed, guard.exc, "solve")
        stats = [xp.reshape(out[i * nb:(i + 1) * nb], batch) for i in range(len(parts))]
        bad = [q for q in range(P) if host[P + q] != 0.0]
        before = xp.reshape(out[k + 2 * P:k + 2 * P + r * nb], (r, nb))
        prior_exact = xp.reshape(xp.all(before == 0.0, axis=0), batch)
        return stats, bad, prior_exact

    def any_nonfinite(*arrays: Any) -> bool:
        return not all(bool(xp.all(xp.isfinite(a))) for a in arrays)

    X = (xp.broadcast_to(x0w[..., None, :], (*batch, n, w)) if init is None
         else xp.astype(init, work, copy=False))
    x_in = boundary(X)
    Xprev, F, R = guard(evaluate, X, x_in, fallback=lambda X, _: (X, X, xp.zeros_like(X)))
    rn_local = _batch_max(R, xp)
    (rnorm,), bad, prior_exact = reduce_stats([rn_local], any_nonfinite(R), rn_local)
    residuals = [float(xp.max(rnorm))]
    updates: list[float] = []
    nonfinite_ranks = bad
    active = xp.ones(batch, dtype=xp.bool, device=dev)
    # the single-process stopping rule, fed with statistics reduced over the ranks
    rule = StoppingRule(rtol, atol, L, work, xp)
    rule.start(rnorm)
    limit = _DIVERGENCE_LIMIT * max(1.0, residuals[0])
    status = Status.MAX_ITER
    method_used = linear_method
    iterations = 0
    if not math.isfinite(residuals[0]):
        status = Status.NONFINITE
    elif residuals[0] == 0.0:
        status = Status.CONVERGED
    all_active = True
    jac_checked = False
    zero_state = xp.zeros_like(x0w)

    def blocks(Xprev: Any, R: Any, F: Any, iteration: int) -> BidiagonalSystem:
        nonlocal jac_checked
        J = cached[1] if cached[0] is Xprev else jac(Xprev, idx)
        if isinstance(J, Factored):
            J = J.dense(xp)
        if not jac_checked:
            _check_blocks(J, s, batch, n, w, work)
            jac_checked = True
        # (one sum proves the blocks finite; the exact test only when it does not)
        if (user_jacobian is not None and not bool(finite_sum_blocks(J, xp))
                and not bool(all_finite_blocks(J, xp) | ~xp.all(xp.isfinite(F)))):
            raise StepFunctionError(
                f"`{user_jacobian}` returned NaN or Inf at finite states (iteration "
                f"{iteration}); check it where the step function is finite (the step's own "
                "values are finite there)")
        return BidiagonalSystem(J, R, x0=zero_state, structure=structure,
                                check_finite=False, xp=xp)

    def no_blocks(Xprev: Any, R: Any, *_: Any) -> BidiagonalSystem:
        return BidiagonalSystem(xp.zeros((*batch, n, *s.block_shape(w)), dtype=work,
                                         device=dev),
                                xp.zeros_like(R), structure=structure, check_finite=False,
                                xp=xp)

    while status is Status.MAX_ITER and iterations < max_iter:
        iterations += 1
        if jac is not None:
            # a rank that failed still takes part in the all-gather, with its error flag
            system = guard(blocks, Xprev, R, F, iterations, fallback=no_blocks)
            z = _incoming(system, comm, zero_state, guard.exc)
            used: list[str] = []
            D = guard(_local_solve, system, z, linear_method, used,
                      fallback=lambda system, *_: xp.zeros_like(system.b))
            if method_used == "auto" and used:
                method_used = used[0]
            # the exact prefix (residual 0, over every rank before this one too) and the
            # state after it take f(X_prev), as in pcrsolve.solve: one more exact state per
            # iteration, bit for bit, whatever D is
            bad_state = xp.astype(~(xp.max(xp.abs(R), axis=-1) <= 0.0), xp.int32)
            clean_before = (xp.cumulative_sum(bad_state, axis=-1) - bad_state) == 0
            pinned = clean_before & prior_exact[..., None]
            Xn = xp.where(pinned[..., None], F, X + D)
        else:
            Xn = F
        x_in_n = boundary(Xn)
        trial = guard(evaluate, Xn, x_in_n, fallback=lambda Xn, _: (Xn, Xn, xp.zeros_like(Xn)))
        Rn = trial[2]
        rn = _batch_max(Rn, xp)
        upd = _batch_max(Xn - X, xp)
        if all_active:
            Xk, x_ink, kept = Xn, x_in_n, trial
        else:
            upd = xp.where(active, upd, xp.zeros_like(upd))
            m = active[..., None, None]
            Xk = xp.where(m, Xn, X)
            x_ink = xp.where(active[..., None], x_in_n, x_in)
            kept = tuple(xp.where(m, a, o) for a, o in zip(trial, (Xprev, F, R), strict=True))
        rn_kept = rn if all_active else xp.where(active, rn, rn_local)
        scale = rule.scale(Xk, kept[1])
        (upd_g, rn_g, scale_g), bad, prior_exact = reduce_stats(
            [upd, rn, scale], any_nonfinite(Xn, Rn), rn_kept)
        rn_local = rn_kept
        rnorm_n = rn_g if all_active else xp.where(active, rn_g, rnorm)
        active_n = active & ~rule.converged(upd_g, rnorm_n, scale_g, iterations)
        rule.record(upd_g, rnorm_n)
        updates.append(float(xp.max(upd_g)))
        residuals.append(float(xp.max(rnorm_n)))
        X, x_in = Xk, x_ink
        Xprev, F, R = kept
        rnorm = rnorm_n
        if not (math.isfinite(updates[-1]) and math.isfinite(residuals[-1])):
            nonfinite_ranks = bad
            status = Status.NONFINITE
            break
        active = active_n
        all_active = bool(xp.all(active))
        if not bool(xp.any(active)):
            status = Status.CONVERGED
        elif residuals[-1] > limit:
            status = Status.DIVERGED
    converged_mask = ~active if status is not Status.NONFINITE else xp.zeros_like(active)
    sol = Solution(xp.astype(X, out_dtype, copy=False), status, iterations, residuals, updates,
                   converged_mask, mode, method_used, globalisation="none")
    if status is not Status.CONVERGED and throw:
        where = (f" Non-finite values appeared on rank(s) "
                 f"{', '.join(map(str, nonfinite_ranks))}." if nonfinite_ranks else "")
        raise ConvergenceError(
            f"pcrsolve.distributed.solve ({mode}, {P} ranks) stopped after {iterations} "
            f"iteration(s): {status.message}. Final residual {residuals[-1]:.3e}.{where}",
            sol)
    return sol, _Trajectory(x_in, offset, L, lengths)


def _check_blocks(J: Any, s: Structure, batch: tuple[int, ...], n: int, w: int,
                  dtype: Any) -> None:
    from .blocks import fits

    tail = (n, *s.block_shape(w))
    if not fits(tuple(J.shape), tail, batch):
        raise StepFunctionError(
            f"`jacobian` must return shape (..., {', '.join(map(str, tail))}) ({s.name} "
            f"blocks, batch dims broadcasting to {batch}); got {tuple(J.shape)}")
    if J.dtype != dtype:
        raise StepFunctionError(f"`jacobian` must return dtype {dtype}; got {J.dtype}")


def adjoint(step: Callable, X: Any, G: Any, trajectory: _Trajectory, comm: Communicator,
            jacobian: Callable | None, jvp: Callable | None, xp: Any) -> tuple[Any, Any, Any]:
    """The adjoint states of a distributed solution: ``lam_l = dloss/dx_l`` in total.

    With ``J_l = df_l/dx (x_{l-1})`` and the local loss gradients ``G``, ``lam`` solves
    ``lam_l = J_{l+1}^T lam_{l+1} + G_l``. Written for ``u_l = J_l^T lam_l`` it is
    ``u_l = J_l^T u_{l+1} + J_l^T G_l`` (``u_{L+1} = 0``), a reverse recurrence in each
    rank's own blocks; the next rank's first ``u`` is this rank's incoming state, and
    ``lam_l = G_l + u_{l+1}``.

    Parameters
    ----------
    step : callable
    X : array, shape (..., n, w)
        This rank's converged states.
    G : array, shape (..., n, w)
        ``d(local loss)/dX``.
    trajectory : _Trajectory
        From the forward solve (incoming state, offset).
    comm : Communicator
    jacobian, jvp : callable or None
        The user's dense Jacobian or JVP (else the backend's autodiff).
    xp : module

    Returns
    -------
    lam : array, shape (..., n, w)
    Xprev : array, shape (..., n, w)
        The inputs of this rank's steps.
    idx : array of int, shape (n,)
        Their global indices.
    """
    n = X.shape[-2]
    idx = xp.arange(trajectory.offset, trajectory.offset + n, dtype=xp.int64,
                    device=device_of(X))
    x_in = xp.broadcast_to(trajectory.x_in, (*X.shape[:-2], X.shape[-1]))
    Xprev = xp.concat([x_in[..., None, :], X[..., :-1, :]], axis=-2)
    guard = _Guard()

    def build() -> Any:
        if jacobian is not None:
            J = jacobian(Xprev, idx)
            J = J.dense(xp) if isinstance(J, Factored) else J
        else:
            J = _jacobian_source("newton", step, None, "dense", jvp, xp)[0](Xprev, idx)
        Jt = xp.matrix_transpose(J)
        rhs = xp.matmul(Jt, G[..., None])[..., 0]
        return BidiagonalSystem(Jt, rhs, structure="dense", reverse=True,
                                check_finite=False, xp=xp)

    system = guard(build, fallback=lambda: None)
    if system is None:
        w = X.shape[-1]
        system = BidiagonalSystem(xp.zeros((*X.shape, w), dtype=X.dtype, device=device_of(X)),
                                  xp.zeros_like(X), structure="dense", reverse=True,
                                  check_finite=False, xp=xp)
    u, u_in = _solve_segment(system, comm, "auto", guard.exc)
    lam = G + xp.concat([u[..., 1:, :], u_in[..., None, :]], axis=-2)
    return lam, Xprev, idx
