"""Stacks of equal-width torch layers (MLPs, residual networks) as Newton-PCR recurrences.

A stack of ``L`` layers ``x_l = layer_l(x_{l-1})`` of one width ``w`` is a Markov
recurrence. :class:`LayerStack` stacks the layers' parameters so that all ``L`` layers
are evaluated in one batched call:

* **fast path** — every layer is ``Sequential(Linear(w, w), act)`` with an elementwise
  activation (Tanh, ReLU, Sigmoid, Identity, LeakyReLU, ELU, SiLU, GELU), optionally inside
  :class:`Residual` (``x + g(x)``): the step is one batched matrix-vector product and the
  Jacobian is analytic, ``diag(act'(W x + b)) W`` (plus ``I`` for residual blocks);
* **general path** — any layers of one class and parameter shapes (a flat list such as
  ``Linear, Tanh, Linear, Tanh, ...`` is first grouped into steps of its repeating
  pattern; stochastic layers only in ``eval()`` mode): parameters stacked with
  :func:`torch.func.stack_module_state`, the step evaluated by :func:`torch.func.vmap` over
  :func:`torch.func.functional_call`, Jacobians from :func:`torch.func.jvp`.

:class:`ParallelSequential` wraps this as an ``nn.Module``: its forward runs Newton-PCR,
its backward the adjoint solve, so it drops into a training loop in place of
``nn.Sequential``.
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Sequence
from typing import Any

import torch
from torch import nn

from ..errors import InputError
from ..factored import Factored
from ..newton import solve
from ..result import Solution

__all__ = ["LayerStack", "ParallelSequential", "Residual"]


class Residual(nn.Module):
    """``x + body(x)``: a residual block (mark blocks with it to get the fast path).

    Parameters
    ----------
    body : nn.Module
        Maps ``(..., w)`` to ``(..., w)``.
    """

    def __init__(self, body: nn.Module) -> None:
        super().__init__()
        self.body = body

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``x + body(x)``."""
        return x + self.body(x)


def _derivatives() -> dict[type, Callable[[torch.Tensor, torch.Tensor, nn.Module], torch.Tensor]]:
    """Elementwise activations and their derivatives ``f'(pre)`` (given ``pre`` and ``f``)."""

    def gelu(pre: torch.Tensor, out: torch.Tensor, m: nn.Module) -> torch.Tensor:
        if getattr(m, "approximate", "none") != "none":
            return torch.func.jvp(m, (pre,), (torch.ones_like(pre),))[1]
        cdf = 0.5 * (1.0 + torch.erf(pre / 2**0.5))
        pdf = torch.exp(-0.5 * pre**2) / (2 * torch.pi) ** 0.5
        return cdf + pre * pdf

    return {
        nn.Tanh: lambda pre, out, m: 1.0 - out**2,
        nn.Sigmoid: lambda pre, out, m: out * (1.0 - out),
        nn.ReLU: lambda pre, out, m: (pre > 0).to(pre.dtype),
        nn.Identity: lambda pre, out, m: torch.ones_like(pre),
        nn.LeakyReLU: lambda pre, out, m: torch.where(
            pre > 0, torch.ones_like(pre), torch.full_like(pre, m.negative_slope)),
        nn.ELU: lambda pre, out, m: torch.where(pre > 0, torch.ones_like(pre), out + m.alpha),
        nn.SiLU: lambda pre, out, m: torch.sigmoid(pre) * (1 + pre * (1 - torch.sigmoid(pre))),
        nn.GELU: gelu,
    }


def _dense_layer(layer: nn.Module) -> tuple[nn.Linear, nn.Module, bool] | None:
    """``(linear, activation, residual)`` if ``layer`` has the fast-path form, else None."""
    residual = isinstance(layer, Residual)
    body = layer.body if residual else layer
    if isinstance(body, nn.Linear):
        return body, nn.Identity(), residual
    if (isinstance(body, nn.Sequential) and len(body) == 2 and isinstance(body[0], nn.Linear)
            and type(body[1]) in _derivatives()):
        return body[0], body[1], residual
    return None


def _period(types: Sequence[type]) -> int | None:
    """The shortest ``p >= 2`` with ``types`` made of whole repeats of its first ``p``."""
    n = len(types)
    for p in range(2, n // 2 + 1):
        if n % p == 0 and all(types[i] is types[i % p] for i in range(n)):
            return p
    return None


def _longest_repeating_prefix(types: Sequence[type]) -> tuple[int, int] | None:
    """``(k, p)``: the longest prefix of ``k >= 2 p`` layers made of repeats of ``p`` classes."""
    best = None
    for p in range(1, len(types) // 2 + 1):
        k = p
        while k + p <= len(types) and all(types[k + i] is types[i] for i in range(p)):
            k += p
        if k >= 2 * p and (best is None or k > best[0]):
            best = (k, p)
    return best


def _group_layers(layers: list[nn.Module]) -> tuple[list[nn.Module], int]:
    """Group a flat layer list into steps of one class; return the steps and the group size.

    ``[Linear, Tanh, Linear, Tanh, ...]`` (the plain ``nn.Sequential`` form) becomes
    ``[Sequential(Linear, Tanh), ...]``: consecutive layers composed in order compute the
    same function whatever the grouping, so only the intermediate states change. Lists
    that are of one class already are returned as they are (group size 1).
    """
    types = [type(m) for m in layers]
    if len(set(types)) == 1:
        return layers, 1
    p = _period(types)
    if p is not None:
        return [nn.Sequential(*layers[i:i + p]) for i in range(0, len(layers), p)], p
    names = ", ".join(t.__name__ for t in types[:8]) + (", ..." if len(types) > 8 else "")
    odd = next(i for i, t in enumerate(types) if t is not types[0])
    msg = (f"all layers must be of one class to be stacked; `layers[0]` is "
           f"{types[0].__name__} but `layers[{odd}]` is {types[odd].__name__}, and the "
           f"{len(types)} layers ({names}) do not repeat one pattern that could be grouped "
           "into steps. ")
    prefix = _longest_repeating_prefix(types)
    if prefix is not None:
        k, q = prefix
        pattern = ", ".join(t.__name__ for t in types[:q])
        block = "layers[i]" if q == 1 else f"nn.Sequential(*layers[i:i + {q}])"
        msg += (f"The first {k} layers repeat ({pattern}): run those in parallel and the rest "
                f"after them, nn.Sequential(ParallelSequential([{block} for i in range(0, "
                f"{k}, {q})]), *layers[{k}:])")
        if k < len(types) and q > 1:
            msg += f", or complete the last step (end the list with a {types[q - 1].__name__})"
        msg += "."
    else:
        msg += ("Give one block per step, all of one class: e.g. "
                "[nn.Sequential(nn.Linear(w, w), nn.Tanh()) for _ in range(L)].")
    raise InputError(msg)


def _is_stochastic(m: nn.Module) -> bool:
    """Whether ``m`` draws random numbers in its forward (dropout, RReLU) in its mode."""
    return m.training and isinstance(m, (nn.modules.dropout._DropoutNd, nn.RReLU))


_STOCHASTIC_ADVICE = (
    "stochastic layers are not supported in the parallel forward: Newton's method evaluates "
    "every step several times and needs the same function each time (a new dropout mask per "
    "evaluation has no solution to converge to). Call .eval() on the model (dropout is then "
    "the identity), remove the layer, or keep it outside ParallelSequential."
)


class LayerStack:
    """``L`` equal-width layers as one vectorized step function with Jacobians.

    Parameters
    ----------
    layers : sequence of nn.Module or nn.Sequential
        Layers mapping ``(..., w)`` to ``(..., w)``, all of one class and parameter shapes;
        or a flat list that repeats one pattern of classes, such as ``nn.Sequential(
        nn.Linear(w, w), nn.Tanh(), nn.Linear(w, w), nn.Tanh(), ...)``, which is grouped
        into steps ``nn.Sequential(nn.Linear(w, w), nn.Tanh())`` (the fast-path form).
        Stochastic layers (dropout, RReLU) are accepted in ``eval()`` mode only.
    jacobian : {"auto", "analytic", "autodiff"}, default "auto"
        ``"analytic"`` needs the fast-path form (see the module docstring); ``"auto"``
        uses it when the layers have that form.

    Attributes
    ----------
    width : int
        ``w``.
    length : int
        ``L``, the number of steps (groups of layers when a flat list was grouped).
    group_size : int
        Layers per step: 1, or the length of the repeating pattern that was grouped.
    layers : list of nn.Module
        The steps (the groups, when grouped); ``flat_layers`` holds the layers as given.
    analytic : bool
        Whether the fast path (analytic Jacobian) is used.

    Examples
    --------
    >>> import torch
    >>> from torch import nn
    >>> from pcrsolve.adapters.torch import LayerStack
    >>> net = nn.Sequential(*[nn.Sequential(nn.Linear(3, 3), nn.Tanh()) for _ in range(5)])
    >>> stack = LayerStack(net)
    >>> stack.length, stack.width, stack.analytic
    (5, 3, True)
    """

    def __init__(self, layers: Sequence[nn.Module] | nn.Sequential, *,
                 jacobian: str = "auto") -> None:
        layers = list(layers)
        if not layers:
            raise InputError("`layers` must hold at least one layer; got none")
        if jacobian not in ("auto", "analytic", "autodiff"):
            raise InputError(
                f"`jacobian` must be 'auto', 'analytic' or 'autodiff'; got {jacobian!r}"
            )
        for i, layer in enumerate(layers):
            if not isinstance(layer, nn.Module):
                raise InputError(f"`layers[{i}]` must be an nn.Module; got {type(layer).__name__}")
        self.flat_layers = layers
        layers, self.group_size = _group_layers(layers)
        first = type(layers[0])
        self.layers = layers
        self.length = len(layers)
        forms = [_dense_layer(layer) for layer in layers]
        fast = all(f is not None for f in forms) and len(
            {(type(f[1]), f[2], f[0].bias is None) for f in forms}) == 1  # type: ignore[index]
        if jacobian == "analytic" and not fast:
            raise InputError(
                "`jacobian='analytic'` needs every layer to be Linear, Sequential(Linear, "
                "activation) or Residual of those, with one activation type; use 'autodiff'"
            )
        self.analytic = fast and jacobian != "autodiff"
        if self.analytic:
            lin, act, residual = forms[0]  # type: ignore[misc]
            self._act, self._residual = act, residual
            self._dact = _derivatives()[type(act)]
            self._linears = [f[0] for f in forms]  # type: ignore[index]
            self.width = lin.in_features
            for i, f in enumerate(forms):
                if f[0].in_features != self.width or f[0].out_features != self.width:  # type: ignore[index]
                    raise InputError(
                        f"every layer must map width {self.width} to itself; `layers[{i}]` "
                        f"maps {f[0].in_features} to {f[0].out_features}"  # type: ignore[index]
                    )
        else:
            shapes = [tuple((n, tuple(p.shape)) for n, p in m.named_parameters())
                      for m in layers]
            for i, s in enumerate(shapes):
                if s != shapes[0]:
                    raise InputError(
                        f"all layers must have the same parameter shapes; `layers[{i}]` has "
                        f"{s}, `layers[0]` has {shapes[0]}"
                    )
            if any(True for _ in layers[0].buffers()):
                raise InputError(
                    "layers with buffers (e.g. BatchNorm running statistics) cannot be "
                    f"stacked; `layers[0]` ({first.__name__}) has buffers"
                )
            self._base = copy.deepcopy(layers[0]).to("meta")
            self.width = _infer_width(layers[0])

    # -- parameters ---------------------------------------------------------------------------
    def parameters(self) -> list[torch.Tensor]:
        """The stacked parameters (differentiable functions of the layers' own).

        Returns
        -------
        list of torch.Tensor
            ``[W (L, w, w), b (L, w)]`` on the fast path (``b`` omitted without bias);
            otherwise one ``(L, ...)`` tensor per parameter of a layer.
        """
        if self.analytic:
            out = [torch.stack([lin.weight for lin in self._linears])]
            if self._linears[0].bias is not None:
                out.append(torch.stack([lin.bias for lin in self._linears]))
            return out
        names = [n for n, _ in self.layers[0].named_parameters()]
        return [torch.stack([dict(m.named_parameters())[n] for m in self.layers])
                for n in names]

    # -- step and Jacobian --------------------------------------------------------------------
    def functions(self, stacked: list[torch.Tensor]) -> dict[str, Any]:
        """Step function (and analytic Jacobian) over the given stacked parameters.

        Parameters
        ----------
        stacked : list of torch.Tensor
            As returned by :meth:`parameters`.

        Returns
        -------
        dict
            ``{"step": step, "jacobian": jacobian or None, "value_and_jacobian": vj}`` for
            :func:`pcrsolve.solve`: ``vj(x, l) -> (step(x, l), blocks)`` in one call (the
            pre-activation computed once on the fast path; on the general path one
            :func:`torch.func.vmap` of :func:`torch.func.jvp` over the basis vectors,
            whose primal output is the value).
        """
        self.check_deterministic()
        if self.analytic:
            W = stacked[0]
            b = stacked[1] if len(stacked) > 1 else None
            act, dact, residual = self._act, self._dact, self._residual

            def pre(x: torch.Tensor, l: torch.Tensor) -> torch.Tensor:
                z = (W[l] @ x.unsqueeze(-1)).squeeze(-1)
                return z if b is None else z + b[l]

            def step(x: torch.Tensor, l: torch.Tensor) -> torch.Tensor:
                y = act(pre(x, l))
                return x + y if residual else y

            def jacobian(x: torch.Tensor, l: torch.Tensor) -> Factored:
                # diag(act'(pre)) W_l (+ I): factored, never materialised on the fused path
                p = pre(x, l)
                return Factored(dact(p, act(p), act), W[l], 1.0 if residual else 0.0)

            gathered: dict[str, torch.Tensor] = {}

            def weights(l: torch.Tensor) -> torch.Tensor:
                # W[l] once per index tensor (the solver passes the same one every call):
                # one weight object, so blocks of different iterates mix per batch element
                if gathered.get("l") is not l:
                    gathered["l"], gathered["W"] = l, W[l]
                return gathered["W"]

            def value_and_jacobian(x: torch.Tensor, l: torch.Tensor
                                   ) -> tuple[torch.Tensor, Factored]:
                Wl = weights(l)
                z = (Wl @ x.unsqueeze(-1)).squeeze(-1)
                p = z if b is None else z + b[l]
                y = act(p)
                return (x + y if residual else y,
                        Factored(dact(p, y, act), Wl, 1.0 if residual else 0.0))

            return {"step": step, "jacobian": jacobian,
                    "value_and_jacobian": value_and_jacobian}

        names = [n for n, _ in self.layers[0].named_parameters()]
        base = self._base
        for mb, m0 in zip(base.modules(), self.layers[0].modules(), strict=True):
            mb.training = m0.training  # train()/eval() after construction reach the copy

        def one(params: tuple[torch.Tensor, ...], x: torch.Tensor) -> torch.Tensor:
            return torch.func.functional_call(base, dict(zip(names, params, strict=True)), (x,))

        batched = torch.func.vmap(one, in_dims=(0, 0))

        def step(x: torch.Tensor, l: torch.Tensor) -> torch.Tensor:
            params = tuple(p[l] for p in stacked)
            try:
                return batched(params, x.movedim(-2, 0)).movedim(0, -2)
            except RuntimeError as exc:
                if "random" not in str(exc):
                    raise
                raise InputError(
                    f"a layer of the stack ({type(self.layers[0]).__name__}) called a random "
                    f"operation: {_STOCHASTIC_ADVICE}"
                ) from exc

        def value_and_jacobian(x: torch.Tensor, l: torch.Tensor
                               ) -> tuple[torch.Tensor, torch.Tensor]:
            eye = torch.eye(x.shape[-1], dtype=x.dtype, device=x.device)

            def column(e: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
                return torch.func.jvp(lambda z: step(z, l), (x,), (e.expand_as(x),))

            # the primal output does not depend on the mapped basis vector: one value
            y, cols = torch.func.vmap(column, out_dims=(None, 0))(eye)
            return y, cols.movedim(0, -1)  # cols[i] = J e_i: (..., n, w, w)

        return {"step": step, "jacobian": None, "value_and_jacobian": value_and_jacobian}

    def check_deterministic(self) -> None:
        """Raise :class:`~pcrsolve.InputError` naming a layer that is stochastic now.

        Dropout (any ``nn.Dropout*``) and ``nn.RReLU`` in training mode draw random numbers
        on every call; in ``eval()`` mode they are deterministic and accepted.
        """
        for i, layer in enumerate(self.flat_layers):
            for name, m in layer.named_modules():
                if _is_stochastic(m):
                    where = f"`layers[{i}]`" + (f" (its submodule `{name}`)" if name else "")
                    raise InputError(
                        f"{where} is {m!r} in training mode: {_STOCHASTIC_ADVICE}"
                    )


def _infer_width(layer: nn.Module) -> int | None:
    for m in layer.modules():
        if isinstance(m, nn.Linear):
            return m.in_features
    return None


class ParallelSequential(nn.Module):
    """A drop-in for ``nn.Sequential`` of equal-width layers, evaluated by Newton-PCR.

    The forward pass solves all layers at once (DeepPCR); the backward pass is one adjoint
    linear solve plus one batched VJP (no backpropagation through Newton iterations).

    Parameters
    ----------
    layers : sequence of nn.Module or nn.Sequential
        The layers (kept as submodules, in the order given: their parameters train as
        usual). Either one block per step, all of one class (e.g. ``Sequential(Linear,
        Tanh)`` or :class:`Residual` blocks), or the plain alternating form of
        ``nn.Sequential(nn.Linear(w, w), nn.Tanh(), nn.Linear(w, w), nn.Tanh(), ...)``:
        a flat list that repeats one pattern of classes is grouped into steps of that
        pattern (the last output is the same; see :class:`LayerStack`). Dropout and other
        stochastic layers work in ``eval()`` mode only; in training mode the forward
        raises :class:`~pcrsolve.InputError` naming the layer.
    mode : str, default "newton"
        Newton mode (see :func:`pcrsolve.solve`).
    jacobian : {"auto", "analytic", "autodiff"}, default "auto"
        See :class:`LayerStack`.
    warm_start : bool, default False
        Start each forward from the previous call's states when the batch shape matches.
        It pays when consecutive calls see the *same* inputs (full-batch training,
        repeated evaluation while the weights change little); with fresh mini-batches
        the previous states are no better than the default guess.
    return_all : bool, default False
        Return all states ``(..., L, w)`` instead of the last one ``(..., w)`` (one state
        per step: per group of layers when a flat list was grouped).
    **solve_kwargs
        Passed to :func:`pcrsolve.solve` (``tol``, ``max_iter``, ``fallback``, ...).

    Attributes
    ----------
    last_solution : pcrsolve.Solution or None
        The solution of the latest forward call (iterations, status, residuals).

    Examples
    --------
    >>> import torch
    >>> from torch import nn
    >>> from pcrsolve.adapters.torch import ParallelSequential
    >>> torch.manual_seed(0)  # doctest: +ELLIPSIS
    <torch._C.Generator object at ...>
    >>> layers = [nn.Sequential(nn.Linear(4, 4), nn.Tanh()) for _ in range(16)]
    >>> seq, par = nn.Sequential(*layers), ParallelSequential(layers)
    >>> x = torch.randn(8, 4)
    >>> bool(torch.allclose(par(x), seq(x), atol=1e-5))
    True
    """

    def __init__(self, layers: Sequence[nn.Module] | nn.Sequential, *, mode: str = "newton",
                 jacobian: str = "auto", warm_start: bool = False, return_all: bool = False,
                 **solve_kwargs: Any) -> None:
        super().__init__()
        self.layers = nn.ModuleList(list(layers))
        self.stack = LayerStack(list(self.layers), jacobian=jacobian)
        self.mode = mode
        self.warm_start = warm_start
        self.return_all = return_all
        self.solve_kwargs = solve_kwargs
        self.last_solution: Solution | None = None
        self._init: torch.Tensor | None = None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Run all layers at once.

        Parameters
        ----------
        x : torch.Tensor, shape (..., w)

        Returns
        -------
        torch.Tensor
            ``(..., w)``, the last layer's output (``(..., L, w)`` with ``return_all``).
        """
        stacked = self.stack.parameters()
        if x.dtype in (torch.float16, torch.bfloat16):
            # half-precision states are computed in float32 (as pcrsolve.solve does): the
            # layers' parameters join them there (a differentiable cast)
            stacked = [p.float() for p in stacked]
        fns = self.stack.functions(stacked)
        L = self.stack.length
        init = None
        if (self.warm_start and self._init is not None
                and self._init.shape == (*x.shape[:-1], L, x.shape[-1])
                and self._init.dtype == x.dtype and self._init.device == x.device):
            init = self._init
        kwargs = {"mode": self.mode, "init": init, **self.solve_kwargs}
        if self.mode in ("newton", "quasi"):
            if fns["jacobian"] is not None:
                kwargs["jacobian"] = fns["jacobian"]  # quasi takes the diagonals itself
            # the value and the blocks of a trial in one call (see pcrsolve.solve)
            kwargs["value_and_jacobian"] = fns["value_and_jacobian"]
        needs_grad = torch.is_grad_enabled() and (
            x.requires_grad or any(p.requires_grad for p in stacked))
        sol = solve(fns["step"], x, L, params=stacked if needs_grad else None, **kwargs)
        self.last_solution = sol
        if self.warm_start:
            self._init = sol.states.detach()
        return sol.states if self.return_all else sol.states[..., -1, :]
