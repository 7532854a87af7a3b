"""``python -m pcrsolve bench gpu``: every GPU target case against the loops and the peers.

One process, one GPU, float32. Each case builds its problem once and times, with CUDA
synchronisation, every contender that is available here:

* the eager loop (the loop a user writes first) and the same loop captured in one CUDA
  graph (the strongest honest sequential baseline: no Python or launch overhead);
* pcrsolve: ``method="auto"`` (the fused kernel where one applies) and the generic
  Array-API path;
* peers when installed: ``torch`` ``associative_scan``, ``accelerated_scan`` (Triton and
  CUDA-warp kernels; layout (B, D, T), T a power of two) and ``jax.lax.associative_scan``.

Every contender's result is compared with the reference; contenders that cannot run here
(no CUDA, peer not installed, T not a power of two) are listed with the reason. On a CPU
the suite runs the same code at tiny sizes (``--size tiny``) so that CI keeps it working;
its timings mean nothing there.
"""

from __future__ import annotations

import importlib.util
import math
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from .harness import machine_description, suite
from .newton import mlp_functions

__all__ = ["CASES", "run_gpu"]


@dataclass
class Result:
    """One contender in one case."""

    name: str
    median_s: float | None = None
    rel_error: float | None = None
    peak_bytes: int | None = None
    note: str = ""


#: a target's check: ``(met?, detail)``, ``met`` None when something it needs was not measured
Check = Callable[["CaseReport"], "tuple[bool | None, str]"]


@dataclass
class CaseReport:
    """One case: its problem, target, reference, contenders and target checks."""

    case: str
    problem: dict[str, Any]
    target: str
    reference: str
    results: list[Result] = field(default_factory=list)
    #: (target text, check) pairs, evaluated by :meth:`verdicts` after the contenders ran
    targets: list[tuple[str, Check]] = field(default_factory=list)
    #: False for tiny sizes or a CPU: speed targets are then "not judged"
    judge_speed: bool = True

    def get(self, name: str) -> Result | None:
        """The contender called ``name`` if it ran, else None."""
        return next((r for r in self.results if r.name == name and r.median_s), None)

    def best(self, prefix: str = "pcrsolve") -> Result | None:
        """The fastest contender whose name starts with ``prefix``."""
        ran = [r for r in self.results if r.name.startswith(prefix) and r.median_s]
        return min(ran, key=lambda r: r.median_s or math.inf, default=None)

    def ratio(self, name: str, over: str) -> float | None:
        """``time(over) / time(name)``, or None if either is missing."""
        a, b = self.get(name), self.get(over)
        return b.median_s / a.median_s if a and b and a.median_s and b.median_s else None

    def verdicts(self) -> list[dict[str, Any]]:
        """Every target with ``"met"``, ``"missed"`` or ``"not measured"`` and a detail."""
        out = []
        for text, check in self.targets:
            met, detail = check(self)
            verdict = "not measured" if met is None else ("met" if met else "missed")
            if met is not None and getattr(check, "timing", False) and not self.judge_speed:
                verdict = "not judged"  # tiny sizes or no GPU: the timings mean nothing
            out.append({"target": text, "verdict": verdict, "detail": detail})
        return out

    def table(self) -> str:
        """An aligned text table of the contenders."""
        ref = next((r for r in self.results if r.name == self.reference), None)
        lines = [f"[{self.case}] " + ", ".join(f"{k}={v}" for k, v in self.problem.items()),
                 f"target: {self.target}"]
        for r in self.results:
            if r.median_s is None:
                lines.append(f"  {r.name:<34} skipped: {r.note}")
                continue
            ratio = (f"{ref.median_s / r.median_s:9.2f}x" if ref and ref.median_s
                     else "      n/a")
            err = "-" if r.rel_error is None else f"{r.rel_error:.1e}"
            mem = "n/a" if r.peak_bytes is None else f"{r.peak_bytes / 2**20:.1f} MiB"
            lines.append(f"  {r.name:<34} {r.median_s * 1e3:10.3f} ms  {ratio} vs "
                         f"{self.reference}  err {err:>7}  peak {mem}  {r.note}")
        for v in self.verdicts():
            lines.append(f"  -> {v['verdict'].upper():<12} {v['target']}: {v['detail']}")
        return "\n".join(lines)


# -- target checks ---------------------------------------------------------------------------
def faster(than: str, factor: float, ours: str | None = None, *, any_of: bool = False) -> Check:
    """``time(than) / time(ours) >= factor``; ``ours`` defaults to the fastest pcrsolve row.

    With ``any_of``, ``than`` is a name prefix and the fastest such contender is compared (a
    peer's variants: faster than every one of them).
    """

    def check(rep: CaseReport) -> tuple[bool | None, str]:
        mine = rep.get(ours) if ours else rep.best()
        other = rep.best(than) if any_of else rep.get(than)
        if mine is None or other is None or not (mine.median_s and other.median_s):
            return None, f"{ours or 'pcrsolve'} or {than} did not run here"
        r = other.median_s / mine.median_s
        return r >= factor, f"{r:.2f}x ({mine.name} vs {other.name}; needs {factor:.3g}x)"

    check.timing = True  # type: ignore[attr-defined]
    return check


def accurate(limit: float, ours: str | None = None) -> Check:
    """The (fastest) pcrsolve result agrees with the reference to ``limit`` (relative)."""

    def check(rep: CaseReport) -> tuple[bool | None, str]:
        mine = rep.get(ours) if ours else rep.best()
        if mine is None or mine.rel_error is None:
            return None, "no pcrsolve result compared"
        return mine.rel_error <= limit, f"{mine.rel_error:.1e} ({mine.name}; needs {limit:g})"

    return check


def memory(sequential: str, jacobian_bytes: int, ours: str | None = None) -> Check:
    """pcrsolve's peak <= 2x the sequential run's peak plus the Jacobians' size.

    ``ours`` defaults to the fastest pcrsolve row (the one the speed targets judge).
    """

    def check(rep: CaseReport) -> tuple[bool | None, str]:
        seq = rep.get(sequential)
        mine = rep.get(ours) if ours else rep.best()
        if seq is None or mine is None or seq.peak_bytes is None or mine.peak_bytes is None:
            return None, "peak memory is measured on CUDA devices only"
        bound = 2 * seq.peak_bytes + jacobian_bytes
        return mine.peak_bytes <= bound, (
            f"{mine.name} {mine.peak_bytes / 2**20:.1f} MiB; bound {bound / 2**20:.1f} MiB "
            f"= 2 x {seq.peak_bytes / 2**20:.1f} ({sequential}) + Jacobians "
            f"{jacobian_bytes / 2**20:.1f}")

    return check


class _Timer:
    """Median timing and peak memory of callables on one torch device."""

    def __init__(self, device: Any, repeat: int) -> None:
        import torch

        self.torch = torch
        self.device = torch.device(device)
        self.cuda = self.device.type == "cuda"
        self.repeat = repeat

    def sync(self) -> None:
        if self.cuda:
            self.torch.cuda.synchronize(self.device)

    def run(self, fn: Callable[[], Any]) -> tuple[Any, float, int | None]:
        out = fn()  # warm-up (compilation, autotuning, graph capture)
        self.sync()
        times = []
        for _ in range(self.repeat):
            self.sync()
            t0 = time.perf_counter()
            out = fn()
            self.sync()
            times.append(time.perf_counter() - t0)
        peak = None
        if self.cuda:
            self.torch.cuda.reset_peak_memory_stats(self.device)
            base = self.torch.cuda.memory_allocated(self.device)
            fn()
            self.sync()
            peak = max(0, self.torch.cuda.max_memory_allocated(self.device) - base)
        return out, statistics.median(times), peak


def _rel(x: Any, ref: Any) -> float:
    x = np.asarray(_np(x), dtype=np.float64)
    ref = np.asarray(_np(ref), dtype=np.float64)
    if x.shape != ref.shape:
        return math.inf
    scale = max(float(np.max(np.abs(ref))) if ref.size else 0.0, 1e-30)
    return float(np.max(np.abs(x - ref))) / scale if ref.size else 0.0


def _np(x: Any) -> np.ndarray:
    if hasattr(x, "detach"):
        return x.detach().float().cpu().numpy()
    return np.asarray(x)


def _try(report: CaseReport, timer: _Timer, name: str, make: Callable[[], Any],
         ref: Any = None, note: str = "", compare: Callable[[Any], Any] | None = None) -> Any:
    """Build a contender with ``make()`` (None or an exception: skipped), time and check it."""
    try:
        fn = make()
    except Exception as exc:  # a peer that is missing or cannot run this case
        report.results.append(Result(name, note=f"{type(exc).__name__}: {exc}"[:160]))
        return None
    if fn is None:
        report.results.append(Result(name, note=note or "not applicable here"))
        return None
    try:
        out, t, peak = timer.run(fn)
    except Exception as exc:
        report.results.append(Result(name, note=f"failed: {type(exc).__name__}: {exc}"[:160]))
        return None
    got = compare(out) if compare else out
    err = None if ref is None else _rel(got, ref)
    report.results.append(Result(name, t, err, peak, note))
    return out


def _cuda_graph(timer: _Timer, body: Callable[[], Any]) -> Callable[[], Any] | None:
    """``body`` captured in one CUDA graph (its outputs are static tensors), or None on CPU."""
    torch = timer.torch
    if not timer.cuda:
        return None
    stream = torch.cuda.Stream(timer.device)
    stream.wait_stream(torch.cuda.current_stream(timer.device))
    with torch.cuda.stream(stream):
        body()  # warm-up outside the graph
    torch.cuda.current_stream(timer.device).wait_stream(stream)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        out = body()

    def replay() -> Any:
        graph.replay()
        return out

    return replay


# -- the cases --------------------------------------------------------------------------------
def _diagonal_case(name: str, B: int, D: int, T: int, target: str, timer: _Timer,
                   peers: bool) -> CaseReport:
    import torch

    import pcrsolve

    dev = timer.device
    g = torch.Generator().manual_seed(0)
    a = (0.5 + 0.49 * torch.rand(B, T, D, generator=g)).to(dev)
    b = torch.randn(B, T, D, generator=g).to(dev)
    system = pcrsolve.BidiagonalSystem(a, b, structure="diagonal", check_finite=False)
    report = CaseReport(name, {"B": B, "D": D, "T": T, "layout": "(B, T, D)"}, target,
                        "addcmul (one pass)")
    limit = 1.2 if peers else 1.5
    report.targets = [
        (f"<= {limit}x one addcmul pass", faster("addcmul (one pass)", 1 / limit,
                                                   "pcrsolve auto")),
        ("agrees with the float64 solve", accurate(1e-5, "pcrsolve auto")),
        ("peak <= 2x one output (the loop's own memory)",
         memory("addcmul (one pass)", 0, "pcrsolve auto")),
    ]
    if peers:
        report.targets.insert(1, ("faster than accelerated-scan",
                                  faster("accelerated-scan", 1.0, "pcrsolve auto", any_of=True)))
    x = torch.empty_like(b)
    _try(report, timer, "addcmul (one pass)", lambda: lambda: torch.addcmul(b, a, x))
    # reference: the generic cyclic reduction in float64 (an independent algorithm)
    ref = pcrsolve.solve_linear(pcrsolve.BidiagonalSystem(
        a.double(), b.double(), structure="diagonal", check_finite=False), method="cr")
    _try(report, timer, "pcrsolve auto", lambda: lambda: pcrsolve.solve_linear(system), ref,
         note=f"method={pcrsolve.choose_method(system)}")
    for passes, label in ((1, "one pass"), (2, "two passes")):
        def tile_scan(passes: int = passes) -> Any:  # both modes, for tuning auto's choice
            from ..backends.triton_scan import available, diagonal_scan

            if not available(a.device):
                raise RuntimeError("needs CUDA and Triton")
            return lambda: diagonal_scan(a, b, None, scalar=False, passes=passes)

        _try(report, timer, f"pcrsolve kernel, {label}", tile_scan, ref)
    _try(report, timer, "pcrsolve generic (pcr)",
         lambda: lambda: pcrsolve.solve_linear(system, method="pcr"), ref)
    if not peers:
        return report
    at, bt = a.transpose(1, 2).contiguous(), b.transpose(1, 2).contiguous()  # (B, D, T)

    def torch_scan() -> Any:
        from torch._higher_order_ops.associative_scan import associative_scan

        def combine(left: Any, right: Any) -> Any:
            return (left[0] * right[0], right[0] * left[1] + right[1])

        scan = torch.compile(lambda a, b: associative_scan(combine, (a, b), dim=2)[1])
        return lambda: scan(at, bt)

    _try(report, timer, "torch associative_scan (compiled)", torch_scan, ref,
         compare=lambda y: y.transpose(1, 2))
    for variant in ("triton", "warp"):
        def accel(variant: str = variant) -> Any:
            if importlib.util.find_spec("accelerated_scan") is None:
                raise ImportError("accelerated_scan is not installed")
            if T & (T - 1):
                return None
            mod = importlib.import_module(f"accelerated_scan.{variant}")
            return lambda: mod.scan(at, bt)

        _try(report, timer, f"accelerated-scan ({variant})", accel, ref,
             note="needs T a power of two" if T & (T - 1) else "",
             compare=lambda y: y.transpose(1, 2))

    def jax_scan() -> Any:
        import jax
        import jax.numpy as jnp

        ja, jb = jnp.asarray(_np(at)), jnp.asarray(_np(bt))

        def combine(left: Any, right: Any) -> Any:
            return (left[0] * right[0], right[0] * left[1] + right[1])

        f = jax.jit(lambda a, b: jax.lax.associative_scan(combine, (a, b), axis=2)[1])
        return lambda: f(ja, jb).block_until_ready()

    _try(report, timer, "jax.lax.associative_scan (jit)", jax_scan, ref,
         compare=lambda y: np.asarray(y).transpose(0, 2, 1))
    return report


def _dense_case(B: int, w: int, L: int, timer: _Timer, peers: bool) -> CaseReport:
    import torch

    import pcrsolve

    dev = timer.device
    g = torch.Generator().manual_seed(1)
    A = (torch.randn(B, L, w, w, generator=g) / math.sqrt(2 * w)).to(dev)
    b = torch.randn(B, L, w, generator=g).to(dev)
    system = pcrsolve.BidiagonalSystem(A, b, check_finite=False)
    report = CaseReport("dense linear", {"B": B, "w": w, "L": L}, "faster than "
                        "jax.lax.associative_scan; >= 150x the CUDA-graph loop",
                        "loop (CUDA graph)")
    report.targets = [
        ("faster than jax.lax.associative_scan", faster("jax", 1.0, "pcrsolve auto", any_of=True)),
        (">= 150x the CUDA-graph loop", faster("loop (CUDA graph)", 150, "pcrsolve auto")),
        ("peak <= 2x the loop's", memory("loop (eager)", 0, "pcrsolve auto")),
    ]
    def loop() -> Any:
        out = torch.empty(B, L, w, device=dev)  # inside: the loop's peak counts its output
        x = torch.zeros(B, w, device=dev)
        for l in range(L):
            x = torch.baddbmm(b[:, l, :, None], A[:, l], x[..., None])[..., 0]
            out[:, l] = x
        return out

    ref = _try(report, timer, "loop (eager)", lambda: loop)
    _try(report, timer, "loop (CUDA graph)", lambda: _cuda_graph(timer, loop), ref,
         note="needs CUDA")
    _try(report, timer, "pcrsolve auto", lambda: lambda: pcrsolve.solve_linear(system), ref,
         note=f"method={pcrsolve.choose_method(system)}")
    _try(report, timer, "pcrsolve pcr", lambda: lambda: pcrsolve.solve_linear(
        system, method="pcr"), ref)
    if peers:
        def jax_scan() -> Any:
            import jax
            import jax.numpy as jnp

            ja, jb = jnp.asarray(_np(A)), jnp.asarray(_np(b))

            def combine(left: Any, right: Any) -> Any:
                A1, b1 = left
                A2, b2 = right
                return A2 @ A1, (A2 @ b1[..., None])[..., 0] + b2

            f = jax.jit(lambda A, b: jax.lax.associative_scan(combine, (A, b), axis=1)[1])
            return lambda: f(ja, jb).block_until_ready()

        _try(report, timer, "jax.lax.associative_scan (jit)", jax_scan, ref)
    return report


def _mlp(L: int, w: int, B: int, dev: Any, seed: int) -> tuple[Any, Any, Any]:
    import torch

    g = torch.Generator().manual_seed(seed)
    W = (torch.randn(L, w, w, generator=g) / math.sqrt(w)).to(dev)
    b = (0.5 * torch.randn(L, w, generator=g)).to(dev)
    x0 = torch.randn(B, w, generator=g).to(dev)
    return W, b, x0


def _newton_case(B: int, w: int, L: int, timer: _Timer) -> CaseReport:
    import torch

    import pcrsolve

    dev = timer.device
    W, b, x0 = _mlp(L, w, B, dev, 2)
    def loop() -> Any:
        # the output is allocated inside, so that the loop's peak memory counts it (a CUDA
        # graph capture keeps it in the graph's own pool: a static output for the replays)
        out = torch.empty(B, L, w, device=dev)
        x = x0
        for l in range(L):
            x = torch.tanh(torch.addmm(b[l], x, W[l].T))
            out[:, l] = x
        return out

    fns = mlp_functions(W, b)
    step = fns["step"]
    report = CaseReport("tanh MLP forward (Newton)", {"B": B, "w": w, "L": L},
                        ">= 30x the eager loop, >= 3x the CUDA-graph loop", "loop (eager)")
    report.targets = [
        (">= 30x the eager loop", faster("loop (eager)", 30)),
        (">= 3x the CUDA-graph loop", faster("loop (CUDA graph)", 3)),
        ("agrees with the loop", accurate(1e-4)),
        ("peak <= 2x the loop's + Jacobians", memory("loop (eager)", 4 * B * L * w * w)),
    ]
    with torch.no_grad():
        ref = _try(report, timer, "loop (eager)", lambda: loop)
        _try(report, timer, "loop (CUDA graph)", lambda: _cuda_graph(timer, loop), ref,
             note="needs CUDA")
        # dense Jacobian blocks, and factored ones (diag(1 - y^2) W, fused into the solve)
        for label, jac in (("", fns["jacobian"]), (" factored", fns["factored"])):
            sol = pcrsolve.solve(step, x0, L, jacobian=jac, tol=1e-5)
            _try(report, timer, f"pcrsolve newton{label}", lambda jac=jac: lambda: pcrsolve.solve(
                step, x0, L, jacobian=jac, tol=1e-5).states, ref,
                note=f"{sol.iterations} iterations, linear {sol.linear_method}")

            def captured(jac: Any = jac, n: int = sol.iterations) -> Any:
                if not timer.cuda:
                    return None
                from ..backends.torch_graphs import CapturedNewton

                solver = CapturedNewton(step, x0, L, n, jacobian=jac)
                return lambda: solver(x0)

            _try(report, timer, f"pcrsolve newton{label}, one CUDA graph", captured, ref,
                 note=f"needs CUDA; {sol.iterations} fixed iterations")
    return report


def _adjoint_case(B: int, w: int, L: int, timer: _Timer) -> CaseReport:
    import torch

    import pcrsolve

    dev = timer.device
    W, b, x0 = _mlp(L, w, B, dev, 3)
    W.requires_grad_(True)
    b.requires_grad_(True)
    weight = torch.randn(B, L, w, device=dev)

    fns = mlp_functions(W, b)
    step, jac = fns["step"], fns["jacobian"]

    def loop() -> Any:
        return fns["loop"](x0)

    report = CaseReport("MLP backward (adjoint)", {"B": B, "w": w, "L": L},
                        ">= 200x eager autograd, >= 10x the CUDA-graph loop",
                        "autograd through loop (eager)")
    report.targets = [
        (">= 200x eager autograd", faster("autograd through loop (eager)", 200,
                                          "pcrsolve adjoint")),
        (">= 10x the CUDA-graph loop", faster("adjoint recurrence loop (CUDA graph)", 10,
                                              "pcrsolve adjoint")),
        ("agrees with autograd", accurate(1e-4, "pcrsolve adjoint")),
        ("peak <= 2x autograd's + Jacobians",
         memory("autograd through loop (eager)", 4 * B * L * w * w)),
    ]
    loss_loop = (loop() * weight).sum()
    ref = _try(report, timer, "autograd through loop (eager)", lambda: lambda: torch.autograd.grad(
        loss_loop, [W, b], retain_graph=True)[0])
    with torch.no_grad():
        X = loop()
        Xprev = torch.cat([x0[:, None], X[:, :-1]], 1)
        Jt = jac(Xprev, torch.arange(L, device=dev)).transpose(-1, -2).contiguous()
    lam = torch.empty(B, L, w, device=dev)

    def adjoint_loop() -> Any:  # lam_l = J_{l+1}^T lam_{l+1} + G_l, the backward's recurrence
        g_ = weight[:, L - 1]
        lam[:, L - 1] = g_
        for l in range(L - 2, -1, -1):
            g_ = torch.baddbmm(weight[:, l, :, None], Jt[:, l + 1], g_[..., None])[..., 0]
            lam[:, l] = g_
        return lam

    _try(report, timer, "adjoint recurrence loop (CUDA graph)",
         lambda: _cuda_graph(timer, adjoint_loop), note="needs CUDA; the recurrence only")
    sol = pcrsolve.solve(step, x0, L, jacobian=jac, params=[W, b], tol=1e-5)
    loss = (sol.states * weight).sum()
    _try(report, timer, "pcrsolve adjoint", lambda: lambda: torch.autograd.grad(
        loss, [W, b], retain_graph=True)[0], ref, note="adjoint solve + one batched VJP")
    return report


def _gru_case(B: int, H: int, T: int, timer: _Timer) -> CaseReport:
    import torch

    from ..adapters.rnn import run_cell

    dev = timer.device
    torch.manual_seed(4)
    cell = torch.nn.GRUCell(4, H)
    with torch.no_grad():
        cell.weight_hh.mul_(0.5)
    cell = cell.to(dev)
    gru = torch.nn.GRU(4, H, batch_first=True, device=dev)
    gru.load_state_dict({f"{k}_l0": v for k, v in cell.state_dict().items()})
    u = torch.randn(B, T, 4, device=dev)
    h0 = torch.randn(B, H, device=dev)
    report = CaseReport("GRU", {"B": B, "hidden": H, "T": T},
                        ">= 10x torch.nn.GRU (cuDNN), same outputs to 1e-4", "torch.nn.GRU")
    report.targets = [(">= 10x torch.nn.GRU", faster("torch.nn.GRU", 10)),
                      ("same outputs to 1e-4", accurate(1e-4)),
                      ("peak <= 2x cuDNN's + Jacobians", memory("torch.nn.GRU", 4 * B * T * H * H))]
    with torch.no_grad():
        ref = _try(report, timer, "torch.nn.GRU", lambda: lambda: gru(u, h0[None])[0])
        _try(report, timer, "pcrsolve run_cell", lambda: lambda: run_cell(
            cell, u, h0, throw=False).outputs, ref)
    return report


def _ddpm_case(T: int, train_steps: int, n: int, timer: _Timer) -> CaseReport:
    import torch
    from sklearn.datasets import load_digits

    from ..adapters.diffusion import NoiseSchedule, sample, sample_sequential
    from .paper import train_digits_denoiser

    dev = timer.device
    images = torch.as_tensor(load_digits().data / 8.0 - 1.0, dtype=torch.float32, device=dev)
    schedule = NoiseSchedule.linear(T)
    model = train_digits_denoiser(images, schedule, train_steps, 0)
    g = torch.Generator().manual_seed(5)
    x_T = torch.randn(n, 64, generator=g).to(dev)
    z = torch.randn(n, T, 64, generator=g).to(dev)
    report = CaseReport("DDPM on the digits denoiser", {"T": T, "samples": n},
                        ">= 11x sequential sampling, samples within 1e-3",
                        "sequential sampling")
    report.targets = [(">= 11x sequential sampling", faster("sequential sampling", 11)),
                      ("samples within 1e-3", accurate(1e-3)),
                      ("peak <= 2x sequential + Jacobians",
                       memory("sequential sampling", 4 * n * T * 64))]
    with torch.no_grad():
        ref = _try(report, timer, "sequential sampling", lambda: lambda: sample_sequential(
            model, x_T, schedule, noise=z)[..., -1, :])
        sol = sample(model, x_T, schedule, noise=z, throw=False)
        _try(report, timer, "pcrsolve sample (gaussian Jacobian)", lambda: lambda: sample(
            model, x_T, schedule, noise=z, throw=False).states[..., -1, :], ref,
            note=f"{sol.iterations} iterations, {sol.status.name}")
    return report


SIZES = {
    "tiny": {"diag": (2, 8, 64), "prime": (1, 4, 101), "dense": (2, 4, 64), "mlp": (2, 4, 64),
             "adjoint": (2, 4, 64), "gru": (2, 4, 64), "ddpm": (20, 20, 4)},
    "full": {"diag": (4, 256, 65536), "prime": (1, 64, 1_000_003), "dense": (8, 4, 16384),
             "mlp": (8, 16, 4096), "adjoint": (8, 4, 16384), "gru": (16, 8, 1 << 20),
             "ddpm": (1000, 2000, 64)},
}

#: case name -> builder(sizes, timer, peers)
CASES: dict[str, Callable[[dict[str, Any], _Timer, bool], CaseReport]] = {
    "diagonal": lambda s, t, p: _diagonal_case(
        "diagonal linear", *s["diag"], "<= 1.2x the time of one addcmul pass; faster than "
        "accelerated-scan", t, p),
    "diagonal-prime": lambda s, t, p: _diagonal_case(
        "diagonal linear, prime T", *s["prime"], "within 1.5x of one addcmul pass", t, False),
    "dense": lambda s, t, p: _dense_case(*s["dense"], t, p),
    "newton": lambda s, t, p: _newton_case(*s["mlp"], t),
    "adjoint": lambda s, t, p: _adjoint_case(*s["adjoint"], t),
    "gru": lambda s, t, p: _gru_case(*s["gru"], t),
    "ddpm": lambda s, t, p: _ddpm_case(*s["ddpm"], t),
}


@suite("gpu")
def run_gpu(opts: Any) -> None:
    """Run every case (or ``--cases``) on one device; print tables, write JSON."""
    import json

    import torch

    device = opts.device or ("cuda" if torch.cuda.is_available() else "cpu")
    size = "full" if opts.size == "full" or (opts.size != "tiny" and device.startswith("cuda")) \
        else "tiny"
    timer = _Timer(device, 3 if size == "tiny" else max(opts.repeat, 5))
    print(machine_description("torch", device) + f"; size {size}; "
          + time.strftime("%Y-%m-%d"))
    if size == "tiny":
        print("(tiny sizes: checks that every contender runs; the timings mean nothing)")
    reports = []
    t0 = time.perf_counter()
    for name, build in CASES.items():
        if opts.cases and name not in opts.cases:
            continue
        report = build(SIZES[size], timer, not opts.no_peers)
        report.judge_speed = size == "full" and timer.cuda
        print(report.table())
        reports.append(report)
        if timer.cuda:
            torch.cuda.empty_cache()
    print(f"total {time.perf_counter() - t0:.1f} s")
    if opts.json:
        with open(opts.json, "w") as fh:
            json.dump({"machine": machine_description("torch", device), "size": size,
                       "date": time.strftime("%Y-%m-%d"),
                       "cases": [{"case": r.case, "problem": r.problem, "target": r.target,
                                  "reference": r.reference,
                                  "results": [vars(x) for x in r.results],
                                  "verdicts": r.verdicts()} for r in reports]},
                      fh, indent=1)
        print(f"wrote {opts.json}")
