"""Benchmark harness: array creation per backend, timing, memory, tables and JSON.

A *suite* is a function ``run(options) -> Report`` registered with :func:`suite`. It
builds one problem, times every contender on it in the same process, checks they agree
with the reference and returns rows; the harness prints the table and writes JSON.
"""

from __future__ import annotations

import json
import math
import platform
import statistics
import sys
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from typing import Any

import array_api_compat
import numpy as np

from ..backends import get_backend

__all__ = [
    "SUITES",
    "Report",
    "Row",
    "Workspace",
    "best_time",
    "machine_description",
    "measure",
    "relative_error",
    "suite",
]

SUITES: dict[str, Callable[[Any], Report | None]] = {}

_Suite = Callable[[Any], "Report | None"]


def suite(name: str) -> Callable[[_Suite], _Suite]:
    """Register a benchmark suite under ``name`` (``python -m pcrsolve bench NAME``).

    A suite returns a :class:`Report` (printed as a table by the CLI), or ``None`` when it
    prints and writes its own output (``bench paper``).
    """

    def register(fn: _Suite) -> _Suite:
        SUITES[name] = fn
        return fn

    return register


@dataclass
class Row:
    """One contender's measurements."""

    name: str
    median_s: float
    times_s: list[float]
    rel_error: float | None = None
    peak_bytes: int | None = None
    extra: dict[str, Any] = field(default_factory=dict)


@dataclass
class Report:
    """A suite's result: the problem, the rows and the reference row's name.

    Rows named in ``baselines`` are the sequential contenders; when ``reference`` is left
    empty it becomes, after timing, the baseline with the smallest median (the speed-up
    column is against the *fastest* loop, and the output names it). ``slower_reason``
    says in one line why pcrsolve may lose to the best loop on this hardware; it is
    printed only when the fastest pcrsolve row is slower than the reference.
    """

    suite: str
    problem: dict[str, Any]
    rows: list[Row]
    reference: str = ""
    machine: str = ""
    baselines: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    slower_reason: str = ""

    def __post_init__(self) -> None:
        if not self.reference:
            timed = [r for r in self.rows if r.name in self.baselines]
            if not timed:
                raise ValueError("Report needs `reference` or at least one row in `baselines`")
            self.reference = min(timed, key=lambda r: r.median_s).name

    def ratio(self, row: Row) -> float:
        """``time(reference) / time(row)``: above 1 means faster than the reference."""
        ref = next(r for r in self.rows if r.name == self.reference)
        return ref.median_s / row.median_s if row.median_s > 0 else math.inf

    def contenders(self) -> list[Row]:
        """The rows that are not sequential baselines (pcrsolve's methods)."""
        return [r for r in self.rows if r.name not in self.baselines]

    def verdict(self) -> str:
        """One line: the fastest pcrsolve row against the best loop, in plain words."""
        ours = self.contenders()
        if not ours or not self.baselines:
            return ""
        best = min(ours, key=lambda r: r.median_s)
        up = self.ratio(best)
        if up >= 1.0:
            return (f"{best.name} is {up:.1f}x faster than the best sequential loop "
                    f"({self.reference})")
        why = f": {self.slower_reason}" if self.slower_reason else ""
        return (f"{best.name} (the fastest pcrsolve row) is {1 / up:.1f}x SLOWER than the "
                f"best sequential loop ({self.reference}){why}")

    def table(self) -> str:
        """The rows as an aligned text table, the baseline named, and the verdict."""
        extra_keys: list[str] = []
        for r in self.rows:
            extra_keys += [k for k in r.extra if k not in extra_keys]
        head = ["method", "median ms", "vs best loop" if self.baselines else
                f"speed-up vs {self.reference}", "max rel err", "peak MiB", *extra_keys]
        lines = [head]
        for r in self.rows:
            up = self.ratio(r)
            timed = math.isfinite(r.median_s)  # an untimed row (e.g. comm only) shows "-"
            lines.append([
                ("* " if r.name == self.reference else "  ") + r.name
                if self.baselines else r.name,
                f"{r.median_s * 1e3:.3f}" if timed else "-",
                f"{up:.3g}x" if timed else "-",
                "-" if r.rel_error is None else f"{r.rel_error:.1e}",
                "n/a" if r.peak_bytes is None else f"{r.peak_bytes / 2**20:.2f}",
                *[str(r.extra.get(k, "")) for k in extra_keys],
            ])
        widths = [max(len(row[i]) for row in lines) for i in range(len(head))]
        out = [
            "  ".join(c.ljust(wd) if i == 0 else c.rjust(wd)
                      for i, (c, wd) in enumerate(zip(row, widths, strict=True)))
            for row in lines
        ]
        out.insert(1, "-" * len(out[0]))
        problem = ", ".join(f"{k}={v}" for k, v in self.problem.items())
        foot = []
        if self.baselines:
            foot.append(f"* reference: {self.reference}, the fastest of {len(self.baselines)} "
                        "sequential loop(s) timed here; rel err against a float64 loop")
        foot += self.notes
        if self.verdict():
            foot.append(self.verdict())
        return f"[{self.suite}] {problem}\n{self.machine}\n" + "\n".join(out + foot)

    def to_json(self) -> dict[str, Any]:
        """A JSON-serialisable dict of the report (ratios and the verdict included)."""
        data = asdict(self)
        for row, r in zip(data["rows"], self.rows, strict=True):
            row["ratio_vs_reference"] = self.ratio(r) if math.isfinite(r.median_s) else None
            row["baseline"] = r.name in self.baselines
        data["verdict"] = self.verdict()
        return data


def machine_description(backend: str, device: str) -> str:
    """CPU model (and GPU name when used), Python and library versions."""
    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as fh:
            for line in fh:
                if line.startswith("model name"):
                    cpu = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    parts = [f"CPU: {cpu}", f"Python {sys.version.split()[0]}", f"NumPy {np.__version__}"]
    if backend == "torch":
        import torch

        parts.append(f"torch {torch.__version__}")
        if device.startswith("cuda"):
            parts.append(f"GPU: {torch.cuda.get_device_name(torch.device(device))}")
    if backend == "cupy":
        import cupy

        parts.append(f"CuPy {cupy.__version__}")
        dev = cupy.cuda.runtime.getDeviceProperties(cupy.cuda.Device().id)
        parts.append(f"GPU: {dev['name'].decode()}")
    return "; ".join(parts)


class Workspace:
    """Creates arrays of one backend, device and dtype from NumPy float64 data.

    Parameters
    ----------
    backend : {"numpy", "torch", "cupy"}
    device : str, optional
        ``"cpu"``/``"cuda"``/``"cuda:1"`` for torch; ignored by NumPy.
    dtype : {"float32", "float64"}
    """

    def __init__(self, backend: str, device: str | None, dtype: str) -> None:
        self.backend = backend
        self.dtype_name = dtype
        if backend == "numpy":
            self.lib = np
            self.device = "cpu"
        elif backend == "torch":
            import torch

            self.lib = torch
            self.device = device or ("cuda" if torch.cuda.is_available() else "cpu")
        elif backend == "cupy":
            import cupy

            self.lib = cupy
            self.device = device or "cuda"
        else:
            raise SystemExit(f"--backend must be numpy, torch or cupy; got {backend!r}")
        self.dtype = getattr(self.lib, dtype)
        self.xp = array_api_compat.array_namespace(self.asarray(np.zeros(1)))
        self.engine = get_backend(self.xp)

    def asarray(self, a: np.ndarray, dtype: Any = None) -> Any:
        """Convert a NumPy array to this workspace's library, device and dtype."""
        dtype = self.dtype if dtype is None else dtype
        if self.backend == "torch":
            return self.lib.as_tensor(a, dtype=dtype, device=self.device)
        return self.lib.asarray(a, dtype=dtype)

    def to_numpy(self, x: Any) -> np.ndarray:
        """Bring an array back to NumPy float64."""
        if self.backend == "torch":
            return x.detach().cpu().double().numpy()
        if self.backend == "cupy":
            return self.lib.asnumpy(x).astype(np.float64)
        return np.asarray(x, dtype=np.float64)

    def sync(self) -> None:
        """Wait for queued device work."""
        self.engine.synchronize(self.device)


def measure(
    ws: Workspace, fn: Callable[[], Any], repeat: int, *, warmup: int = 1, memory: bool = True
) -> tuple[Any, list[float], int | None]:
    """Run ``fn`` ``warmup`` times, then time it ``repeat`` times.

    Returns
    -------
    result : Any
        The last result of ``fn``.
    times : list of float
        Seconds of each timed run (device synchronised before and after).
    peak : int or None
        Peak bytes allocated during one extra run, where the backend can tell.
    """
    result = None
    for _ in range(warmup):
        result = fn()
    ws.sync()
    times = []
    for _ in range(repeat):
        ws.sync()
        t0 = ws.engine.timer()
        result = fn()
        ws.sync()
        times.append(ws.engine.timer() - t0)
    peak = None
    if memory:
        tracker = ws.engine.memory_tracker(ws.device)
        tracker.start()
        result = fn()
        peak = tracker.stop()
    return result, times, peak


def best_time(
    fn: Callable[[], Any], repeat: int = 1, sync: Callable[[], None] | None = None
) -> tuple[Any, float]:
    """Run ``fn`` ``repeat`` times; its last result and the best wall time in seconds.

    ``sync`` (e.g. ``torch.cuda.synchronize``) is called before and after each run, so that
    queued device work is timed. The examples use it; the suites use :func:`measure`.
    """
    best, result = float("inf"), None
    for _ in range(max(1, repeat)):
        if sync is not None:
            sync()
        t0 = time.perf_counter()
        result = fn()
        if sync is not None:
            sync()
        best = min(best, time.perf_counter() - t0)
    return result, best


def relative_error(x: np.ndarray, ref: np.ndarray) -> float:
    """``max |x - ref| / max(max |ref|, tiny)`` (NaN counts as infinite error)."""
    if x.shape != ref.shape:
        return math.inf
    scale = max(float(np.max(np.abs(ref))) if ref.size else 0.0, 1e-300)
    if ref.size == 0:
        return 0.0
    err = float(np.max(np.abs(x - ref)))
    return math.inf if math.isnan(err) else err / scale


def median(times: list[float]) -> float:
    """The median of ``times``."""
    return statistics.median(times)


def write_json(reports: list[Report], path: str) -> None:
    """Write the reports to ``path`` as JSON."""
    with open(path, "w") as fh:
        json.dump([r.to_json() for r in reports], fh, indent=2, default=str)
