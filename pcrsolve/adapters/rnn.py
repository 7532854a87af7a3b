"""RNN cells over time as Newton-PCR recurrences: ``nn.RNNCell``, ``nn.GRUCell``, ``nn.LSTMCell``.

A recurrent cell applied along a sequence, ``h_t = cell(u_t, h_{t-1})``, ``t = 1..T``, is a
Markov recurrence whose step index is time: :func:`run_cell` solves it for all ``T`` time
steps at once with :func:`pcrsolve.solve` (Newton on the whole trajectory, one
``O(log T)``-depth linear solve per iteration) instead of ``T`` dependent cell calls.

What makes it cheap:

* the input part of every gate, ``W_ih u_t + b_ih``, does not depend on the state: it is
  computed for all ``t`` in **one** matrix product before the solve, and the step only
  adds the hidden part ``W_hh h + b_hh`` (for all ``(batch, t)`` in one product);
* the cell equations are written with torch operations on the cell's own
  ``weight_ih``/``weight_hh``/``bias_ih``/``bias_hh``, so they accept any leading dims
  (``nn.GRUCell`` itself only takes 2-D input);
* the Jacobian ``d h_t / d h_{t-1}`` is analytic (``jacobian="analytic"``, the default): a
  few elementwise products of gate values with the rows of ``weight_hh``, instead of
  ``w`` forward-mode JVPs of the step (``jacobian="autodiff"``).

The state of an LSTM is ``(h, c)``, stored concatenated (width ``2 * hidden_size``);
:class:`RNNSolution` splits it again. Gradients with respect to the inputs, ``h0`` and
every cell parameter reach autograd through the adjoint solve of
:func:`pcrsolve.solve` (``params=`` is filled in by the adapter).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn
from torch.nn import functional as F

from ..errors import InputError
from ..newton import solve
from ..result import Solution

__all__ = ["CELL_TYPES", "CellRecurrence", "RNNSolution", "cell_recurrence", "run_cell"]

#: The supported cell classes (subclasses are accepted unless they override ``forward``:
#: the adapter evaluates the standard equations, not the module).
CELL_TYPES = (nn.RNNCell, nn.GRUCell, nn.LSTMCell)
JACOBIANS = ("analytic", "autodiff")
_RESERVED = ("params", "jacobian_structure", "jvp", "value_and_jacobian")


@dataclass
class CellRecurrence:
    """A cell over a sequence, in the form :func:`pcrsolve.solve` takes.

    Attributes
    ----------
    step : callable
        ``step(h_prev, l)``: states ``(..., n, w)`` and 0-based time indices ``l`` of shape
        ``(n,)`` to the next states ``(..., n, w)``.
    jacobian : callable or None
        ``jacobian(h_prev, l)``: analytic blocks, dense ``(..., n, w, w)`` or (for
        ``structure="diagonal"``) their diagonals ``(..., n, w)``; ``None`` for
        ``jacobian="autodiff"``.
    structure : {"dense", "diagonal"}
        What ``jacobian`` returns.
    x0 : torch.Tensor, shape (..., w)
        The initial state (``h0``, or ``concat(h0, c0)`` for an LSTM), broadcast to the
        batch, in the working dtype.
    length : int
        ``T``, the number of time steps.
    params : list of torch.Tensor or None
        The tensors the step depends on that require grad (the precomputed input
        projection and the hidden weights); ``None`` when no gradient is wanted.
    kind : {"rnn_tanh", "rnn_relu", "gru", "lstm"}
    hidden_size : int
    value_and_jacobian : callable or None
        ``value_and_jacobian(h_prev, l) -> (step(h_prev, l), jacobian(h_prev, l))`` from
        one evaluation of the gates (see :func:`pcrsolve.solve`); ``None`` with
        ``jacobian``.
    """

    step: Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
    jacobian: Callable[[torch.Tensor, torch.Tensor], torch.Tensor] | None
    structure: str
    x0: torch.Tensor
    length: int
    params: list[torch.Tensor] | None
    kind: str
    hidden_size: int
    value_and_jacobian: Callable[[torch.Tensor, torch.Tensor], tuple[torch.Tensor, Any]] | None \
        = None

    def solve_kwargs(self) -> dict[str, Any]:
        """Keyword arguments for :func:`pcrsolve.solve` (besides step, x0 and length)."""
        out: dict[str, Any] = {"params": self.params}
        if self.jacobian is not None:
            out["jacobian"] = self.jacobian
            out["jacobian_structure"] = self.structure
        if self.value_and_jacobian is not None:
            out["value_and_jacobian"] = self.value_and_jacobian
        return out


@dataclass(repr=False)
class RNNSolution(Solution):
    """A :class:`~pcrsolve.Solution` with the states split and laid out like the inputs.

    ``states`` keeps pcrsolve's convention ``(..., T, w)`` (batch first, ``w = H`` or
    ``2H`` for an LSTM, working dtype); the attributes below are views of it in the layout
    of ``inputs`` and in the cell's dtype.

    Attributes
    ----------
    outputs : torch.Tensor
        ``h_1 .. h_T``: ``(..., T, H)`` if ``batch_first`` else ``(T, ..., H)`` (what
        ``nn.RNN``/``nn.GRU``/``nn.LSTM`` return as ``output``).
    cell_states : torch.Tensor or None
        LSTM only: ``c_1 .. c_T`` in the layout of ``outputs``.
    h_n : torch.Tensor, shape (..., H)
        The last hidden state.
    c_n : torch.Tensor or None, shape (..., H)
        LSTM only: the last cell state.
    """

    outputs: Any = None
    cell_states: Any = None
    h_n: Any = None
    c_n: Any = None


# -- cell equations --------------------------------------------------------------------------
# Conventions (torch's): gates stacked along the rows of weight_ih/weight_hh in the order
# GRU (r, z, n), LSTM (i, f, g, o). ``gi`` is the precomputed input part W_ih u_t + b_ih
# of shape (..., T, G*H); ``Whh`` (G*H, H), ``bhh`` (G*H,) or None.
#
# Jacobians: every term is ``diag(v) W`` for a vector ``v`` and a (H, H) block ``W`` of
# weight_hh, so one helper builds either the dense block (v[..., None] * W) or only its
# diagonal (v * diag(W)) for mode="quasi".


def _rows(v: torch.Tensor, W: torch.Tensor, dense: bool) -> torch.Tensor:
    """``diag(v) W``: ``(..., H, H)`` if ``dense`` else its diagonal ``(..., H)``."""
    return v[..., None] * W if dense else v * torch.diagonal(W)


def _sum_rows(terms: list[tuple[torch.Tensor, torch.Tensor]], dense: bool) -> torch.Tensor:
    """``sum_k diag(v_k) W_k``, accumulated in place (one ``(..., H, H)`` buffer, not one per
    term: the dense blocks are the largest arrays of the solve)."""
    (v, W), *rest = terms
    out = _rows(v, W, dense)
    for v, W in rest:
        if dense:
            out.addcmul_(v[..., None], W)
        else:
            out.addcmul_(v, torch.diagonal(W))
    return out


def _rnn_step(gi: torch.Tensor, Whh: torch.Tensor, bhh: torch.Tensor | None,
              relu: bool) -> tuple[Callable, Callable]:
    act = torch.relu if relu else torch.tanh

    def step(h: torch.Tensor, l: torch.Tensor) -> torch.Tensor:
        return act(gi[..., l, :] + F.linear(h, Whh, bhh))

    def value_and_jacobian(h: torch.Tensor, l: torch.Tensor, dense: bool = True
                           ) -> tuple[torch.Tensor, torch.Tensor]:
        pre = gi[..., l, :] + F.linear(h, Whh, bhh)
        y = act(pre)
        d = (pre > 0).to(pre.dtype) if relu else 1.0 - y**2
        return y, _rows(d, Whh, dense)

    return step, value_and_jacobian


def _gru_gates(gi: torch.Tensor, Whh: torch.Tensor, bhh: torch.Tensor | None,
               h: torch.Tensor, l: torch.Tensor) -> tuple[torch.Tensor, ...]:
    i_r, i_z, i_n = gi[..., l, :].chunk(3, dim=-1)
    h_r, h_z, h_n = F.linear(h, Whh, bhh).chunk(3, dim=-1)
    r = torch.sigmoid(i_r + h_r)
    z = torch.sigmoid(i_z + h_z)
    n = torch.tanh(i_n + r * h_n)
    return r, z, n, h_n


def _gru_step(gi: torch.Tensor, Whh: torch.Tensor,
              bhh: torch.Tensor | None) -> tuple[Callable, Callable]:
    W_r, W_z, W_n = Whh.chunk(3, dim=0)

    def step(h: torch.Tensor, l: torch.Tensor) -> torch.Tensor:
        _, z, n, _ = _gru_gates(gi, Whh, bhh, h, l)
        return n + z * (h - n)  # (1 - z) n + z h

    def value_and_jacobian(h: torch.Tensor, l: torch.Tensor, dense: bool = True
                           ) -> tuple[torch.Tensor, torch.Tensor]:
        # h' = (1 - z) n + z h:
        # dh'/dh = diag(1 - z) dn/dh + diag(h - n) dz/dh + diag(z), with
        # dz/dh = diag(z (1 - z)) W_z, dr/dh = diag(r (1 - r)) W_r,
        # dn/dh = diag(1 - n^2) [diag(h_n) dr/dh + diag(r) W_n].
        r, z, n, h_n = _gru_gates(gi, Whh, bhh, h, l)
        a = (1.0 - z) * (1.0 - n * n)
        J = _sum_rows([(a * h_n * r * (1.0 - r), W_r), (a * r, W_n),
                       ((h - n) * z * (1.0 - z), W_z)], dense)
        if dense:
            torch.diagonal(J, dim1=-2, dim2=-1).add_(z)
        else:
            J = J.add_(z)
        return n + z * (h - n), J

    return step, value_and_jacobian


def _lstm_gates(gi: torch.Tensor, Whh: torch.Tensor, bhh: torch.Tensor | None,
                x: torch.Tensor, l: torch.Tensor, H: int) -> tuple[torch.Tensor, ...]:
    h, c = x[..., :H], x[..., H:]
    pre = gi[..., l, :] + F.linear(h, Whh, bhh)
    p_i, p_f, p_g, p_o = pre.chunk(4, dim=-1)
    i, f, o = torch.sigmoid(p_i), torch.sigmoid(p_f), torch.sigmoid(p_o)
    g = torch.tanh(p_g)
    c_new = f * c + i * g
    return i, f, g, o, c, c_new, torch.tanh(c_new)


def _lstm_step(gi: torch.Tensor, Whh: torch.Tensor, bhh: torch.Tensor | None,
               H: int) -> tuple[Callable, Callable]:
    W_i, W_f, W_g, W_o = Whh.chunk(4, dim=0)

    def step(x: torch.Tensor, l: torch.Tensor) -> torch.Tensor:
        _, _, _, o, _, c_new, t = _lstm_gates(gi, Whh, bhh, x, l, H)
        return torch.cat([o * t, c_new], dim=-1)

    def value_and_jacobian(x: torch.Tensor, l: torch.Tensor, dense: bool = True
                           ) -> tuple[torch.Tensor, torch.Tensor]:
        # c' = f c + i g, h' = o tanh(c'); state (h, c):
        # dc'/dh = diag(c f(1-f)) W_f + diag(g i(1-i)) W_i + diag(i (1-g^2)) W_g, dc'/dc = diag(f)
        # dh'/dh = diag(tanh(c') o(1-o)) W_o + diag(o (1-tanh^2 c')) dc'/dh,
        # dh'/dc = diag(o (1-tanh^2 c') f)
        i, f, g, o, c, c_new, t = _lstm_gates(gi, Whh, bhh, x, l, H)
        value = torch.cat([o * t, c_new], dim=-1)
        u_f, u_i, u_g = c * f * (1.0 - f), g * i * (1.0 - i), i * (1.0 - g * g)
        s = o * (1.0 - t * t)
        dc_dh = _sum_rows([(u_f, W_f), (u_i, W_i), (u_g, W_g)], dense)
        dh_dh = _sum_rows([(t * o * (1.0 - o), W_o), (s * u_f, W_f), (s * u_i, W_i),
                           (s * u_g, W_g)], dense)
        if not dense:
            return value, torch.cat([dh_dh, f], dim=-1)
        J = dh_dh.new_zeros((*dh_dh.shape[:-2], 2 * H, 2 * H))
        J[..., :H, :H] = dh_dh
        J[..., H:, :H] = dc_dh
        torch.diagonal(J[..., :H, H:], dim1=-2, dim2=-1).copy_(s * f)
        torch.diagonal(J[..., H:, H:], dim1=-2, dim2=-1).copy_(f)
        return value, J

    return step, value_and_jacobian


# -- argument handling ---------------------------------------------------------------------


def _kind(cell: Any) -> str:
    base = next((c for c in CELL_TYPES if isinstance(cell, c)), None)
    if base is not None and type(cell).forward is not base.forward:
        raise InputError(
            f"`cell` of type {type(cell).__name__} overrides {base.__name__}.forward; the "
            f"adapter evaluates the standard {base.__name__} equations, so it cannot run it"
        )
    if isinstance(cell, nn.LSTMCell):
        return "lstm"
    if isinstance(cell, nn.GRUCell):
        return "gru"
    if isinstance(cell, nn.RNNCell):
        if cell.nonlinearity not in ("tanh", "relu"):
            raise InputError(
                f"`cell`: nn.RNNCell nonlinearity must be 'tanh' or 'relu'; "
                f"got {cell.nonlinearity!r}"
            )
        return f"rnn_{cell.nonlinearity}"
    names = ", ".join(f"nn.{c.__name__}" for c in CELL_TYPES)
    raise InputError(f"`cell` must be one of {names}; got {type(cell).__name__}")


def _working_dtype(dtype: torch.dtype) -> torch.dtype:
    """float32/float64 as they are; half precisions are computed in float32."""
    if dtype in (torch.float32, torch.float64):
        return dtype
    if dtype in (torch.float16, torch.bfloat16):
        return torch.float32
    raise InputError(
        f"`cell` parameters must be floating point (float16/bfloat16/float32/float64); "
        f"got {dtype}"
    )


def _sequence_first_to_batch_first(x: torch.Tensor, batch_first: bool) -> torch.Tensor:
    return x if batch_first else torch.movedim(x, 0, -2)


def _check_inputs(inputs: Any, cell: nn.Module, batch_first: bool) -> torch.Tensor:
    layout = "(..., T, input_size)" if batch_first else "(T, ..., input_size)"
    if not isinstance(inputs, torch.Tensor):
        raise InputError(f"`inputs` must be a torch.Tensor of shape {layout}; "
                         f"got {type(inputs).__name__}")
    if inputs.ndim < 2:
        raise InputError(f"`inputs` must have shape {layout} (at least 2 dims); "
                         f"got {tuple(inputs.shape)}")
    if inputs.shape[-1] != cell.input_size:
        raise InputError(
            f"`inputs` must have shape {layout} with input_size = {cell.input_size} (the "
            f"cell's); got {tuple(inputs.shape)}"
        )
    T = inputs.shape[-2] if batch_first else inputs.shape[0]
    if T == 0:
        raise InputError(f"`inputs` must hold at least one time step (T >= 1) in shape "
                         f"{layout}; got {tuple(inputs.shape)}")
    if not inputs.is_floating_point():
        raise InputError(f"`inputs` must be floating point; got {inputs.dtype}")
    w = cell.weight_hh
    if inputs.dtype != w.dtype:
        raise InputError(f"`inputs` must have the cell's dtype {w.dtype}; got {inputs.dtype}")
    if inputs.device != w.device:
        raise InputError(f"`inputs` must be on the cell's device {w.device}; "
                         f"got {inputs.device}")
    return _sequence_first_to_batch_first(inputs, batch_first)


def _initial_state(h0: Any, kind: str, H: int, batch: tuple[int, ...],
                   like: torch.Tensor, work: torch.dtype) -> torch.Tensor:
    """``x0`` of shape ``(*batch, w)``: ``h0`` or ``concat(h0, c0)``, zeros by default."""
    if kind == "lstm":
        if h0 is None:
            parts: tuple[Any, ...] = (None, None)
        elif isinstance(h0, (tuple, list)) and len(h0) == 2:
            parts = tuple(h0)
        else:
            raise InputError(f"`h0` of an nn.LSTMCell must be a pair (h0, c0) of tensors "
                             f"(..., {H}) or None; got {type(h0).__name__}")
        names = ("h0[0] (h0)", "h0[1] (c0)")
    else:
        parts, names = (h0,), ("h0",)
    out = []
    for name, p in zip(names, parts, strict=True):
        if p is None:
            out.append(torch.zeros((*batch, H), dtype=work, device=like.device))
            continue
        if not isinstance(p, torch.Tensor):
            raise InputError(f"`{name}` must be a torch.Tensor of shape (..., {H}); "
                             f"got {type(p).__name__}")
        if p.ndim < 1 or p.shape[-1] != H:
            raise InputError(f"`{name}` must have shape (..., {H}) (hidden_size last); "
                             f"got {tuple(p.shape)}")
        if p.dtype != like.dtype or p.device != like.device:
            raise InputError(f"`{name}` must have the cell's dtype {like.dtype} and device "
                             f"{like.device}; got {p.dtype} on {p.device}")
        try:
            full = torch.broadcast_shapes(tuple(p.shape[:-1]), batch)
        except RuntimeError:
            raise InputError(f"`{name}` batch dims {tuple(p.shape[:-1])} do not broadcast "
                             f"with the batch dims {batch} of `inputs`") from None
        if full != batch:
            raise InputError(f"`{name}` batch dims {tuple(p.shape[:-1])} must broadcast to "
                             f"the batch dims {batch} of `inputs`")
        out.append(p.to(work).expand(*batch, H))
    x0 = out[0] if len(out) == 1 else torch.cat(out, dim=-1)
    return x0.contiguous()


def cell_recurrence(
    cell: nn.Module,
    inputs: torch.Tensor,
    h0: torch.Tensor | tuple[torch.Tensor, torch.Tensor] | None = None,
    *,
    batch_first: bool = True,
    jacobian: str = "analytic",
    structure: str = "dense",
) -> CellRecurrence:
    """The step, Jacobian, initial state and parameters of ``cell`` run over ``inputs``.

    The building block of :func:`run_cell`, for calling :func:`pcrsolve.solve` directly
    (``pcrsolve.solve(rec.step, rec.x0, rec.length, **rec.solve_kwargs())``).

    Parameters
    ----------
    cell : nn.RNNCell, nn.GRUCell or nn.LSTMCell
        The cell; ``RNNCell`` with ``nonlinearity`` ``"tanh"`` or ``"relu"``; with or
        without biases.
    inputs : torch.Tensor, shape (..., T, input_size) or (T, ..., input_size)
        The input sequence (``batch_first=True``: time is the second-to-last axis; else
        the first), same dtype and device as the cell. ``T >= 1``.
    h0 : torch.Tensor of shape (..., H), or (h0, c0) for an LSTM, optional
        Initial state(s), broadcasting to the batch dims of ``inputs``; zeros by default.
    batch_first : bool, default True
        Layout of ``inputs``.
    jacobian : {"analytic", "autodiff"}, default "analytic"
        ``"analytic"``: the formula for ``d h_t / d h_{t-1}``; ``"autodiff"``: none
        (pcrsolve then uses ``w`` forward-mode JVPs of the step per iteration).
    structure : {"dense", "diagonal"}, default "dense"
        Blocks of the analytic Jacobian: dense for ``mode="newton"``, the diagonal for
        ``mode="quasi"``.

    Returns
    -------
    CellRecurrence

    Raises
    ------
    InputError
        For an unsupported cell or malformed ``inputs``/``h0`` (the message names it).
    """
    kind = _kind(cell)
    if jacobian not in JACOBIANS:
        raise InputError(f"`jacobian` must be one of {JACOBIANS}; got {jacobian!r}")
    if structure not in ("dense", "diagonal"):
        raise InputError(f"`structure` must be 'dense' or 'diagonal'; got {structure!r}")
    if not isinstance(batch_first, bool):
        raise InputError(f"`batch_first` must be a bool; got {batch_first!r}")
    H = int(cell.hidden_size)
    w_hh = cell.weight_hh
    work = _working_dtype(w_hh.dtype)
    u = _check_inputs(inputs, cell, batch_first)
    batch, T = tuple(u.shape[:-2]), int(u.shape[-2])
    x0 = _initial_state(h0, kind, H, batch, w_hh, work)

    def cast(p: torch.Tensor | None) -> torch.Tensor | None:
        return None if p is None else p.to(work)

    # One matrix product for the input part of every gate at every time step.
    gi = F.linear(u.to(work), cast(cell.weight_ih), cast(cell.bias_ih))
    Whh, bhh = cast(w_hh), cast(cell.bias_hh)
    if kind == "gru":
        step, pair = _gru_step(gi, Whh, bhh)
    elif kind == "lstm":
        step, pair = _lstm_step(gi, Whh, bhh, H)
    else:
        step, pair = _rnn_step(gi, Whh, bhh, relu=kind == "rnn_relu")

    dense = structure == "dense"

    def jacobian_fn(x: torch.Tensor, l: torch.Tensor) -> torch.Tensor:
        return pair(x, l, dense)[1]

    def value_and_jacobian(x: torch.Tensor, l: torch.Tensor) -> tuple[torch.Tensor, Any]:
        return pair(x, l, dense)

    params = None
    if torch.is_grad_enabled():
        params = [p for p in (gi, Whh, bhh) if p is not None and p.requires_grad] or None
    analytic = jacobian == "analytic"
    return CellRecurrence(step=step, jacobian=jacobian_fn if analytic else None,
                          structure=structure, x0=x0, length=T, params=params, kind=kind,
                          hidden_size=H,
                          value_and_jacobian=value_and_jacobian if analytic else None)


def run_cell(
    cell: nn.Module,
    inputs: torch.Tensor,
    h0: torch.Tensor | tuple[torch.Tensor, torch.Tensor] | None = None,
    *,
    batch_first: bool = True,
    mode: str = "newton",
    jacobian: str = "analytic",
    **solve_kwargs: Any,
) -> RNNSolution:
    """Run a recurrent cell over a sequence with Newton-PCR: all time steps at once.

    Computes ``h_t = cell(u_t, h_{t-1})`` for ``t = 1..T`` (for an LSTM,
    ``(h_t, c_t) = cell(u_t, (h_{t-1}, c_{t-1}))``), the same values as ``nn.RNN``,
    ``nn.GRU`` or ``nn.LSTM`` with the cell's weights, by :func:`pcrsolve.solve`.

    Parameters
    ----------
    cell : nn.RNNCell, nn.GRUCell or nn.LSTMCell
        The cell (``RNNCell`` with ``nonlinearity="tanh"`` or ``"relu"``), with or without
        biases, float32/float64 (float16/bfloat16 cells are computed in float32).
    inputs : torch.Tensor, shape (..., T, input_size), or (T, ..., input_size)
        The sequence: ``batch_first=True`` takes ``(B, T, input_size)``, ``(T,
        input_size)`` (unbatched) or more leading batch dims; ``batch_first=False`` takes
        ``(T, B, input_size)``. Same dtype and device as the cell; ``T >= 1``. If it
        requires grad, its gradient is computed.
    h0 : torch.Tensor of shape (..., H), or a pair (h0, c0) for an LSTM, optional
        The initial state, broadcasting to the batch dims of ``inputs``; zeros by default.
    batch_first : bool, default True
        Layout of ``inputs`` and of the returned ``outputs``.
    mode : str, default "newton"
        The Jacobian mode of :func:`pcrsolve.solve` (``"quasi"`` uses the diagonal of the
        analytic Jacobian, ``"sequential"`` is the loop).
    jacobian : {"analytic", "autodiff"}, default "analytic"
        Where ``d h_t / d h_{t-1}`` comes from: the closed-form expression (faster:
        a few elementwise products with the rows of ``weight_hh``) or ``torch.func.jvp``.
    **solve_kwargs
        Further options of :func:`pcrsolve.solve` (``tol``, ``max_iter``, ``init``,
        ``linear_method``, ``fallback``, ``throw``, ...). ``params`` is not accepted: the
        adapter passes the cell's parameters (and the inputs, if they require grad)
        itself.

    Returns
    -------
    RNNSolution
        A :class:`~pcrsolve.Solution` whose ``states`` ``(..., T, w)`` (``w = H``, or
        ``2H`` holding ``concat(h, c)`` for an LSTM) are differentiable with respect to
        ``inputs``, ``h0`` and the cell's parameters (adjoint method), plus ``outputs``
        (``h_1..h_T`` in the layout of ``inputs``), ``h_n``, and for an LSTM
        ``cell_states`` and ``c_n``.

    Raises
    ------
    InputError
        Unsupported cell, wrong input width, ``T = 0``, mismatched ``h0``, dtype or device,
        or a reserved keyword in ``solve_kwargs`` (the message names the argument).
    ConvergenceError
        If the solve does not converge and ``throw`` is true (see :func:`pcrsolve.solve`).

    Examples
    --------
    >>> import torch
    >>> from pcrsolve.adapters.rnn import run_cell
    >>> _ = torch.manual_seed(0)
    >>> cell = torch.nn.GRUCell(3, 5, dtype=torch.float64)
    >>> u = torch.randn(2, 100, 3, dtype=torch.float64)          # (B, T, input_size)
    >>> sol = run_cell(cell, u)
    >>> sol.outputs.shape, sol.status.name
    (torch.Size([2, 100, 5]), 'CONVERGED')
    >>> gru = torch.nn.GRU(3, 5, batch_first=True, dtype=torch.float64)
    >>> gru.load_state_dict({f"{k}_l0": v for k, v in cell.state_dict().items()})
    <All keys matched successfully>
    >>> bool(torch.allclose(sol.outputs, gru(u)[0], atol=1e-10))
    True
    """
    for key in _RESERVED:
        if key in solve_kwargs:
            raise InputError(
                f"`{key}` is set by run_cell itself (the cell's parameters, its analytic "
                f"Jacobian); use cell_recurrence() and pcrsolve.solve() for full control"
            )
    if jacobian not in JACOBIANS:
        raise InputError(f"`jacobian` must be one of {JACOBIANS}; got {jacobian!r}")
    structure = "diagonal" if mode == "quasi" else "dense"
    rec = cell_recurrence(cell, inputs, h0, batch_first=batch_first, jacobian=jacobian,
                          structure=structure)
    sol = solve(rec.step, rec.x0, rec.length, mode=mode, **rec.solve_kwargs(), **solve_kwargs)
    return _split(sol, rec, cell.weight_hh.dtype, batch_first)


def _split(sol: Solution, rec: CellRecurrence, dtype: torch.dtype,
           batch_first: bool) -> RNNSolution:
    """Wrap ``sol`` with the LSTM state split and the layout of the inputs restored."""
    H = rec.hidden_size
    X = sol.states

    def layout(seq: torch.Tensor) -> torch.Tensor:
        seq = seq.to(dtype)
        return seq if batch_first else torch.movedim(seq, -2, 0)

    fields = {f.name: getattr(sol, f.name) for f in dataclasses.fields(Solution)}
    h = X[..., :H]
    out = RNNSolution(**fields, outputs=layout(h), h_n=h[..., -1, :].to(dtype))
    if rec.kind == "lstm":
        c = X[..., H:]
        out.cell_states = layout(c)
        out.c_n = c[..., -1, :].to(dtype)
    return out
