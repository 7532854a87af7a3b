"""Step functions: the vectorized convention, a wrapper for one-step functions, and
the checks applied to what a user's function returns."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import array_api_compat

from .errors import StepFunctionError

__all__ = ["StepFunction", "checked", "vectorize_step"]

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


def checked(fn: Callable[..., Any], name: str, xp: Any) -> Callable[..., Any]:
    """Wrap a user function so that its first result is checked for type, shape, dtype.

    The first call verifies that the result is an array of namespace ``xp`` with the
    shape of the states it was given (or the Jacobian shape) and their dtype; later calls
    are passed through unchecked (no overhead in the loop).
    """
    state = {"checked": False}

    def call(*args: Any, expect: tuple[int, ...], dtype: Any) -> Any:
        out = fn(*args)
        if not state["checked"]:
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
                raise StepFunctionError(
                    f"`{name}` must return shape {tuple(expect)} for these inputs; got "
                    f"{tuple(out.shape)}"
                )
            if out.dtype != dtype:
                raise StepFunctionError(
                    f"`{name}` must return dtype {dtype} (the dtype of the states it is "
                    f"given); got {out.dtype}. Cast its parameters to {dtype}."
                )
            state["checked"] = True
        return out

    return call
