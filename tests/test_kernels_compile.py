"""The Triton kernels compiled ahead of time for real GPUs, with no GPU present.

The interpreter (``TRITON_INTERPRET=1``, tests/test_kernels.py) runs the kernels' Python
semantics and is more permissive than the compiler: a dtype clash, a constexpr misuse or a
layout the backend cannot lower passes there and fails on a GPU. Here every variant is
compiled to a cubin for Hopper (sm_90) and Ampere (sm_80) by Triton's own NVIDIA backend
(tests/triton_aot.py, in a process without the interpreter), and its resource usage is
read back with the ``cuobjdump`` Triton ships: the kernels, the dense blocks and the
chunk's product included, must stay in registers (no local-memory spills).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

pytest.importorskip("torch")
triton = pytest.importorskip("triton")
pytest.importorskip("triton.backends.nvidia")

sys.path.insert(0, str(Path(__file__).parent))
from triton_aot import variants  # noqa: E402

_SCRIPT = Path(__file__).parent / "triton_aot.py"


@pytest.fixture(scope="module")
def compiled() -> dict[str, dict[str, Any]]:
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    run = subprocess.run([sys.executable, str(_SCRIPT)], capture_output=True, text=True,
                         env=env, timeout=1200)
    assert run.returncode == 0, run.stderr[-3000:]
    return json.loads(run.stdout)


@pytest.mark.parametrize("name", sorted(variants()))
def test_kernel_variant_compiles_for_gpu(compiled, name):
    assert compiled[name]["error"] is None, compiled[name]["error"]


@pytest.mark.parametrize("name", sorted(variants()))
def test_kernel_variant_keeps_its_state_in_registers(compiled, name):
    result = compiled[name]
    if result["error"] is not None:
        pytest.skip("did not compile (reported by test_kernel_variant_compiles_for_gpu)")
    if result["local"] is None:
        pytest.skip("cuobjdump (shipped with Triton's NVIDIA backend) was not found: "
                    "the spill check cannot run here")
    assert result["local"] == 0, f"{name}: {result['local']} bytes of spills"
