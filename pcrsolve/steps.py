"""Step functions: the vectorized convention, a wrapper for one-step functions, and
the checks applied to what a user's function returns."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import array_api_compat

from .errors import PCRSolveError, StepFunctionError

__all__ = ["CONVENTION", "StepFunction", "call_step", "checked", "checked_pair", "vectorize_step"]

#: ``step(x_prev, l) -> x``: states ``(..., n, w)``, 0-based indices ``(n,)`` -> ``(..., n, w)``.
StepFunction = Callable[[Any, Any], Any]


def vectorize_step(fn: Callable[[Any, int], Any]) -> StepFunction:
    """Turn a one-step function ``fn(x, l)`` into a vectorized step function.

    Parameters
    ----------
    fn : callable
        ``fn(x, l)`` maps one state ``(..., w)`` and a Python int ``l`` (0-based: it
        computes ``x_{l+1}`` from ``x_l``) to the next state ``(..., w)``.

    Returns
    -------
    callable
        ``step(x_prev, l)`` on ``(..., n, w)`` states, calling ``fn`` once per step. It is
        as slow as the loop it replaces (``n`` calls); write the step vectorized to profit
        from the parallel solve.

    Examples
    --------
    >>> import numpy as np
    >>> import pcrsolve
    >>> step = pcrsolve.vectorize_step(lambda x, l: np.cos(x) + 0.1 * l)
    >>> step(np.zeros((3, 1)), np.arange(3)).ravel().tolist()
    [1.0, 1.1, 1.2]
    """

    def step(x_prev: Any, l: Any) -> Any:
        xp = array_api_compat.array_namespace(x_prev)
        outs = [fn(x_prev[..., i, :], int(l[i])) for i in range(x_prev.shape[-2])]
        if not outs:
            return x_prev
        return xp.stack(outs, axis=-2)

    step.__wrapped__ = fn  # type: ignore[attr-defined]
    return step


#: How pcrsolve calls a step function: the sentence every calling-convention error ends with.
CONVENTION = (
    "pcrsolve calls step functions vectorized over steps: step(x_prev, l) gets the states "
    "x_prev of shape (..., n, w) and the 0-based step indices l, an integer array of shape "
    "(n,), and returns the next states, shape (..., n, w). Write the step that way (a "
    "matrix per step: (W[l] @ x_prev[..., None])[..., 0] rather than W[l] @ x_prev), or wrap "
    "a one-step-at-a-time function fn(x, l) (x of shape (..., w), l a Python int) with "
    "pcrsolve.vectorize_step(fn), which calls it once per step (as slow as the loop)."
)


def _describe(x_prev: Any, l: Any) -> str:
    """``step(x_prev, l)`` with their shapes, for messages."""
    return (f"step(x_prev, l) with x_prev of shape {tuple(x_prev.shape)} and l of shape "
            f"{tuple(l.shape)}")


def _works_one_step_at_a_time(fn: Callable[..., Any], x_prev: Any, l: Any) -> bool:
    """Whether ``fn(x_prev[..., 0, :], int(l[0]))`` returns one state of shape ``(..., w)``.

    Called only after ``fn`` failed on the vectorized call, to tell a one-step-at-a-time
    function from a vectorized one with a bug of its own.
    """
    if getattr(x_prev, "ndim", 0) < 2 or x_prev.shape[-2] < 1 or l.shape[0] < 1:
        return False
    try:
        out = fn(x_prev[..., 0, :], int(l[0]))
    except Exception:  # any failure means "not a one-step function"
        return False
    want = (*x_prev.shape[:-2], x_prev.shape[-1])
    return tuple(getattr(out, "shape", ())) == tuple(want)


def call_step(fn: Callable[..., Any], x_prev: Any, l: Any, name: str = "step") -> Any:
    """``fn(x_prev, l)``, explaining the calling convention if it fails.

    Used for the first evaluation of a user's step function. If the vectorized call raises
    and ``fn`` works on one state with a Python int index, the function was written one
    step at a time: :class:`~pcrsolve.StepFunctionError` says so, explains the convention
    and points to :func:`vectorize_step`, chained to the original exception. Any other
    exception propagates unchanged, with a note on the convention attached.

    Parameters
    ----------
    fn : callable
        The user's step function.
    x_prev : array, shape (..., n, w)
    l : array of int, shape (n,)
    name : str, default "step"
        The argument's name in messages.

    Returns
    -------
    array
        Whatever ``fn`` returns.

    Raises
    ------
    StepFunctionError
        If ``fn`` fails vectorized but works one step at a time.
    """
    try:
        return fn(x_prev, l)
    except PCRSolveError:
        raise
    except Exception as exc:
        if _works_one_step_at_a_time(fn, x_prev, l):
            raise StepFunctionError(
                f"`{name}` raised {type(exc).__name__} ({exc}) when called as "
                f"{_describe(x_prev, l)}, but works on one state at a time: it looks like a "
                f"one-step-at-a-time function. {CONVENTION}"
            ) from exc
        if hasattr(exc, "add_note"):  # Python >= 3.11
            exc.add_note(f"pcrsolve: raised by `{name}` on its first call, {_describe(x_prev, l)} "
                         "(step functions are called vectorized over steps; "
                         "pcrsolve.vectorize_step wraps a one-step-at-a-time function)")
        raise


def _check_result(out: Any, fn: Callable[..., Any], args: tuple[Any, ...], name: str, xp: Any,
                  expect: tuple[int, ...], dtype: Any) -> None:
    """Raise :class:`StepFunctionError` unless ``out`` is an ``xp`` array, ``expect``, ``dtype``."""
    try:
        ns = array_api_compat.array_namespace(out)
    except TypeError:
        raise StepFunctionError(
            f"`{name}` must return an array; got {type(out).__name__}"
        ) from None
    if ns.__name__ != xp.__name__:
        raise StepFunctionError(
            f"`{name}` must return an array of the same library as the states "
            f"({xp.__name__}); got {ns.__name__}"
        )
    if tuple(out.shape) != tuple(expect):
        hint = ""
        if _works_one_step_at_a_time(fn, *args):
            hint = (" It works on one state at a time: it looks like a one-step-at-a-time "
                    "function. ")
        raise StepFunctionError(
            f"`{name}` must return shape {tuple(expect)} for these inputs; got "
            f"{tuple(out.shape)} from {_describe(*args)}.{hint or ' '}{CONVENTION}"
        )
    if out.dtype != dtype:
        raise StepFunctionError(
            f"`{name}` must return dtype {dtype} (the dtype of the states it is "
            f"given); got {out.dtype}. Cast its parameters to {dtype}."
        )


def checked(fn: Callable[..., Any], name: str, xp: Any) -> Callable[..., Any]:
    """Wrap a user function so that its first result is checked for type, shape, dtype.

    The first call goes through :func:`call_step` (a failure explains the calling
    convention) and verifies that the result is an array of namespace ``xp`` with the
    shape of the states it was given (or the Jacobian shape) and their dtype; later calls
    are passed through unchecked (no overhead in the loop).
    """
    state = {"checked": False}

    def call(*args: Any, expect: tuple[int, ...], dtype: Any) -> Any:
        if state["checked"]:
            return fn(*args)
        out = call_step(fn, *args, name=name)
        _check_result(out, fn, args, name, xp, expect, dtype)
        state["checked"] = True
        return out

    return call


def checked_pair(fn: Callable[..., Any], name: str, xp: Any) -> Callable[..., Any]:
    """:func:`checked` for a function returning ``(value, jacobian)``: checks the value.

    The first call verifies that ``fn`` returned a pair whose first element is what the
    step function would return (array of ``xp``, shape ``expect``, ``dtype``); the
    Jacobian is checked by the Newton loop like any other. Later calls pass through.
    """
    state = {"checked": False}

    def call(*args: Any, expect: tuple[int, ...], dtype: Any) -> tuple[Any, Any]:
        if state["checked"]:
            return fn(*args)
        out = call_step(fn, *args, name=name)
        if not (isinstance(out, tuple) and len(out) == 2):
            raise StepFunctionError(
                f"`{name}` must return a pair (value, jacobian): the step's value "
                f"f(x_prev, l) and its Jacobian blocks; got {type(out).__name__}"
                + (f" of length {len(out)}" if isinstance(out, (tuple, list)) else "")
            )
        _check_result(out[0], fn, args, name, xp, expect, dtype)
        state["checked"] = True
        return out

    return call
