"""Array namespaces at the public boundary: inference, device, dtype and value checks.

Every public entry point calls these once, with the *names* of its arguments, so that
an error message can say which argument is wrong and what was expected.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import Any

import array_api_compat

from .errors import BackendMismatchError, InputError, NonFiniteError

__all__ = [
    "broadcast_shapes",
    "check_device",
    "check_finite",
    "check_memory",
    "device_of",
    "infer_namespace",
    "real_float_dtypes",
    "shared_device",
    "working_dtype",
]


def _describe(x: Any) -> str:
    shape = getattr(x, "shape", None)
    dtype = getattr(x, "dtype", None)
    if shape is None:
        return f"an object of type {type(x).__name__}"
    return f"a {type(x).__module__}.{type(x).__name__} of shape {tuple(shape)}, dtype {dtype}"


def device_of(x: Any) -> Any:
    """The device of array ``x`` (``"cpu"`` for NumPy)."""
    return array_api_compat.device(x)


def infer_namespace(arrays: Mapping[str, Any], xp: Any | None = None) -> Any:
    """The one Array-API namespace shared by the named arrays.

    Parameters
    ----------
    arrays : mapping of str to array
        Argument name -> array (``None`` values are skipped).
    xp : module, optional
        A namespace imposed by the caller; the arrays must belong to it.

    Returns
    -------
    module
        The (compat-wrapped) namespace.

    Raises
    ------
    InputError
        If an argument is not an array of a supported library.
    BackendMismatchError
        If the arguments belong to different array libraries.
    """
    spaces: dict[str, Any] = {}
    for name, x in arrays.items():
        if x is None:
            continue
        try:
            spaces[name] = array_api_compat.array_namespace(x)
        except TypeError as exc:
            raise InputError(
                f"`{name}` must be an array of a library that supports the Array API "
                f"(NumPy, PyTorch, CuPy, array_api_strict, ...); got {_describe(x)}"
            ) from exc
    if xp is not None:
        xp = array_api_compat.array_namespace(xp.zeros(0)) if hasattr(xp, "zeros") else xp
    names = {name: getattr(s, "__name__", str(s)) for name, s in spaces.items()}
    distinct = sorted(set(names.values()) | ({xp.__name__} if xp is not None else set()))
    if len(distinct) > 1:
        detail = ", ".join(f"`{n}` is {lib}" for n, lib in names.items())
        if xp is not None:
            detail += f", xp is {xp.__name__}"
        raise BackendMismatchError(
            f"all arrays must come from one array library; got {detail}. Convert them to "
            "one library (e.g. torch.as_tensor or numpy.asarray) before calling."
        )
    if xp is not None:
        return xp
    if not spaces:
        raise InputError("no array argument was given, so the array library is unknown")
    return next(iter(spaces.values()))


def shared_device(arrays: Mapping[str, Any]) -> Any:
    """The device shared by the named arrays.

    Raises
    ------
    BackendMismatchError
        If two arrays live on different devices; the message names both.
    """
    devices = {n: array_api_compat.device(x) for n, x in arrays.items() if x is not None}
    items = list(devices.items())
    first_name, first = items[0]
    for name, dev in items[1:]:
        if dev != first:
            raise BackendMismatchError(
                f"all arrays must live on one device; `{first_name}` is on {first} but "
                f"`{name}` is on {dev}. Move them with .to(device) first."
            )
    return first


def real_float_dtypes(xp: Any) -> list[Any]:
    """The real floating dtypes of namespace ``xp`` (half precisions where it has them)."""
    names = ("float16", "bfloat16", "float32", "float64")
    return [getattr(xp, n) for n in names if hasattr(xp, n)]


def working_dtype(arrays: Mapping[str, Any], xp: Any) -> tuple[Any, Any]:
    """The dtype to compute in and the dtype to return, for the named arrays.

    Half-precision inputs (float16, bfloat16) are computed in float32 and returned in
    their own dtype; float32 and float64 are computed as they are. Mixed float dtypes
    promote as the Array API says.

    Raises
    ------
    InputError
        If any array is not real floating point (integer, bool, complex).
    """
    floats = real_float_dtypes(xp)
    dtypes = []
    for name, x in arrays.items():
        if x is None:
            continue
        if not any(x.dtype == d for d in floats):
            raise InputError(
                f"`{name}` must have a real floating dtype (float32 or float64; float16 and "
                f"bfloat16 are computed in float32); got dtype {x.dtype}. Convert it with "
                "astype(float64) or .double()."
            )
        dtypes.append(x.dtype)
    out = dtypes[0]
    for d in dtypes[1:]:
        if d != out:
            try:
                out = xp.result_type(out, d)
            except TypeError:  # e.g. float16 with bfloat16
                out = xp.float32
    work = out if (out == xp.float32 or out == xp.float64) else xp.float32
    return work, out


def finite_sum(x: Any, xp: Any) -> Any:
    """A 0-d bool array: whether the sum of ``x`` is finite (one reduction, no mask, no
    host sync); then every element is.

    NaN and Inf propagate through a sum (``Inf - Inf`` is NaN), so a finite sum proves
    every element finite. The converse does not hold: finite values whose sum overflows
    give an infinite sum. Half-precision arrays are summed in float32, whose range no sum
    of float16/bfloat16 values can leave.
    """
    from .backends import get_backend

    half = [getattr(xp, n) for n in ("float16", "bfloat16") if hasattr(xp, n)]
    dtype = xp.float32 if any(x.dtype == d for d in half) else None
    with get_backend(xp).quiet_float_errors():  # an overflowing sum is not an error here
        return xp.isfinite(xp.sum(x, dtype=dtype))


def _sum_is_finite(x: Any, xp: Any) -> bool:
    """:func:`finite_sum` read on the host."""
    return bool(finite_sum(x, xp))


def check_finite(arrays: Mapping[str, Any], xp: Any) -> None:
    """Raise :class:`NonFiniteError` naming the first array that holds NaN or Inf.

    One reduction per array (a sum, which NaN and Inf poison); only when that sum is not
    finite does the exact elementwise test run, which tells NaN and Inf apart from finite
    values whose sum overflows, and counts the bad entries for the message.
    """
    for name, x in arrays.items():
        if x is None or x.size == 0:
            continue
        if _sum_is_finite(x, xp):
            continue
        if not bool(xp.all(xp.isfinite(x))):
            bad = int(xp.sum(xp.astype(~xp.isfinite(x), xp.int64)))
            raise NonFiniteError(
                f"`{name}` holds {bad} NaN or Inf value(s) (shape {tuple(x.shape)}); all "
                "inputs must be finite. Pass check_finite=False to skip this check."
            )


def broadcast_shapes(shapes: Mapping[str, tuple[int, ...]]) -> tuple[int, ...]:
    """Broadcast the named batch shapes together.

    Raises
    ------
    InputError
        If two batch shapes do not broadcast; the message names the arguments.
    """
    result: tuple[int, ...] = ()
    owner: dict[int, str] = {}
    for name, shape in shapes.items():
        n = max(len(result), len(shape))
        a = (1,) * (n - len(result)) + tuple(result)
        b = (1,) * (n - len(shape)) + tuple(shape)
        out = []
        for i, (p, q) in enumerate(zip(a, b, strict=True)):
            if p == q or q == 1:
                out.append(p)
            elif p == 1:
                out.append(q)
                owner[i - n] = name
            else:
                raise InputError(
                    f"the batch dimensions of `{name}` {tuple(shape)} do not broadcast with "
                    f"those of `{owner.get(i - n, 'the other arguments')}` "
                    f"(batch shape so far {tuple(result)})"
                )
            if q != 1 and i - n not in owner:
                owner[i - n] = name
        result = tuple(out)
    return result


#: devices that hold no data: nothing can be computed or read back from them
_UNSUPPORTED_DEVICES = ("meta",)


def check_device(arrays: Mapping[str, Any]) -> None:
    """Raise :class:`InputError` naming an array on a device pcrsolve cannot compute on.

    A torch ``meta`` tensor has a shape but no data: every convergence test would fail deep
    inside with an allocator or ``.item()`` error.
    """
    for name, x in arrays.items():
        if x is None:
            continue
        dev = array_api_compat.device(x)
        kind = getattr(dev, "type", str(dev))
        if str(kind).split(":")[0] in _UNSUPPORTED_DEVICES:
            raise InputError(
                f"`{name}` lives on the {dev!s} device, which holds no data and cannot be "
                "computed on; create it on 'cpu' or 'cuda'"
            )


def _memory_limit(device: Any) -> int:
    """Bytes that could possibly be allocated on ``device`` (physical RAM on a CPU)."""
    kind = str(getattr(device, "type", device)).split(":")[0]
    if kind == "cpu":
        try:
            return int(os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE"))
        except (ValueError, OSError, AttributeError):
            pass
    return 1 << 44  # 16 TiB: more than any single accelerator holds


def check_memory(name: str, nbytes: int, device: Any, what: str) -> None:
    """Raise :class:`InputError` naming ``name`` when ``nbytes`` cannot fit on ``device``.

    Called before any allocation, with an estimate of what the computation holds.
    """
    limit = _memory_limit(device)
    if nbytes > limit:
        raise InputError(
            f"`{name}` is too large: {what} needs about {nbytes / 2**30:.3g} GiB, more than "
            f"the {limit / 2**30:.3g} GiB the device {device!s} can hold. Solve shorter "
            "segments one after another, or a smaller batch."
        )
