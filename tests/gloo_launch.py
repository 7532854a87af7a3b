"""Launching a test module's worker on P real gloo processes, shared by the distributed tests.

A test module ``tests/test_x.py`` runs its checks in ``_worker(P, rank, port, out)`` and
calls :func:`finish_worker` at the end; :func:`launch` starts ``P`` such processes
(``python tests/test_x.py WORKER P RANK PORT OUT``) and returns every rank's results.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
from typing import Any

import pytest

import pcrsolve


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def launch(script: str, P: int, tmp: Any, timeout: float) -> list[Any]:
    """Run ``script``'s worker on ``P`` processes; every rank's results, in rank order.

    The test fails (naming the rank and quoting its output) when a process times out,
    exits with an error or writes no results.
    """
    port = free_port()
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": os.pathsep.join(
        [os.path.dirname(os.path.dirname(os.path.abspath(pcrsolve.__file__))),
         os.environ.get("PYTHONPATH", "")])}
    outs = [os.path.join(str(tmp), f"rank{r}.json") for r in range(P)]
    procs = [subprocess.Popen([sys.executable, os.path.abspath(script), "WORKER", str(P),
                               str(r), str(port), outs[r]], env=env, stdout=subprocess.PIPE,
                              stderr=subprocess.STDOUT) for r in range(P)]
    deadline = time.monotonic() + timeout
    logs = []
    for p in procs:
        try:
            logs.append(p.communicate(timeout=max(1.0, deadline - time.monotonic()))[0])
        except subprocess.TimeoutExpired:
            for q in procs:
                q.kill()
            pytest.fail(f"distributed launch with P={P} timed out after {timeout} s")
    for r, (p, log) in enumerate(zip(procs, logs, strict=True)):
        if p.returncode != 0 or not os.path.exists(outs[r]):
            pytest.fail(f"rank {r} of {P} exited with {p.returncode}:\n"
                        f"{log.decode(errors='replace')[-4000:]}")
    results = []
    for o in outs:
        with open(o) as fh:
            results.append(json.load(fh))
    return results


def recorder(results: dict[str, str | None]) -> Any:
    """``check(name, fn)`` for a worker: runs ``fn()`` and records ``results[name]``, None if
    it passed, else the traceback (each check's failure is reported by its own test)."""
    import traceback

    def check(name: str, fn: Any) -> None:
        try:
            fn()
            results[name] = None
        except Exception:
            results[name] = traceback.format_exc()

    return check


def finish_worker(results: Any, out: str) -> None:
    """Write a worker's ``results`` to ``out`` and leave the process (never returns)."""
    import torch.distributed as dist

    with open(out, "w") as fh:
        json.dump(results, fh)
    dist.barrier()  # every rank is done with the group
    # leave without the C++ teardown: gloo's threads were seen to abort a process at exit
    # ("terminate called without an active exception", exit -6) after every result had
    # been written, failing a CI run; the results are on disk, nothing else is left to do
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)
