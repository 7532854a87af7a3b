"""Ahead-of-time compilation of every Triton kernel variant for real GPUs (no GPU needed).

Run as a script (``python tests/triton_aot.py``) it compiles each variant to a cubin with
Triton's NVIDIA backend and prints, as JSON, ``{variant: {"error": str | None, "local":
bytes of local memory per thread | None}}``. It must run in a process without
``TRITON_INTERPRET=1`` (under the interpreter ``@triton.jit`` builds interpreted functions,
which cannot be compiled): tests/test_kernels_compile.py starts it that way.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import tempfile
from typing import Any

ARCHS = (90, 80)
_PTR = {"fp32": "*fp32", "fp64": "*fp64", "fp16": "*fp16", "bf16": "*bf16"}


def variants() -> dict[str, tuple[str, dict[str, str], dict[str, Any]]]:
    """``name -> (kernel, signature, constexprs)``, dtypes named as Triton spells them."""
    out: dict[str, tuple[str, dict[str, str], dict[str, Any]]] = {}
    for arch in ARCHS:
        for inp, acc in (("fp32", "fp32"), ("fp64", "fp64"), ("bf16", "fp32"),
                         ("fp16", "fp32")):
            for bw in (8, 64):  # the narrowest and widest feature blocks of plan()
                for final, reverse in ((False, False), (True, False), (True, True)):
                    sig = {"a_ptr": _PTR[inp], "b_ptr": _PTR[inp], "x_ptr": _PTR[inp],
                           "p_ptr": _PTR[acc], "s_ptr": _PTR[acc], "L": "i32", "W": "i32",
                           "n_chunks": "i32", "chunk_len": "i32", "a_sb": "i64",
                           "a_sl": "i64", "a_sw": "i64"}
                    tile = max(16, (1024 if acc == "fp64" else 2048) // bw)
                    cons = {"TILE": tile, "BLOCK_W": bw, "FINAL": final, "REVERSE": reverse,
                            "ACC": acc}
                    name = (f"diagonal-{inp}-w{bw}-final{int(final)}-rev{int(reverse)}"
                            f"-sm{arch}")
                    out[name] = ("triton_scan._tile_kernel", sig, {**cons, "arch": arch})
        for acc in ("fp32", "fp64"):
            for bw in (1, 4, 16):
                for scaled in (False, True):
                    for final in (False, True):
                        sig = dict.fromkeys(("a_ptr", "b_ptr", "x_ptr", "p_ptr", "s_ptr",
                                             "d_ptr"), _PTR[acc])
                        sig.update({"L": "i32", "W": "i32", "n_chunks": "i32", "a_sb": "i64"})
                        cons = {"CHUNK": 64, "BW": bw, "FINAL": final, "REVERSE": final,
                                "ACC": acc, "SCALED": scaled, "IDENT": 1.0 if scaled else 0.0}
                        name = (f"dense-{acc}-w{bw}-{'factored' if scaled else 'blocks'}"
                                f"-final{int(final)}-sm{arch}")
                        out[name] = ("triton_dense._dense_chunk_kernel", sig,
                                     {**cons, "arch": arch})
    return out


def _local_bytes(cubin: bytes) -> int | None:
    import triton

    tool = os.path.join(os.path.dirname(triton.__file__), "backends", "nvidia", "bin",
                        "cuobjdump")
    if not os.path.exists(tool):
        return None
    with tempfile.NamedTemporaryFile(suffix=".cubin", delete=False) as fh:
        fh.write(cubin)
    try:
        text = subprocess.run([tool, "--dump-resource-usage", fh.name], capture_output=True,
                              text=True, check=True).stdout
    finally:
        os.unlink(fh.name)
    found = re.findall(r"LOCAL:(\d+)", text)
    return max(int(v) for v in found) if found else None


def compile_all() -> dict[str, dict[str, Any]]:
    """Compile every variant; errors are reported per variant, not raised."""
    import triton
    import triton.language as tl
    from pcrsolve.backends import triton_dense, triton_scan
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource

    modules = {"triton_scan": triton_scan, "triton_dense": triton_dense}
    results: dict[str, dict[str, Any]] = {}
    for name, (where, sig, cons) in variants().items():
        mod, fn = where.split(".")
        cons = dict(cons)
        arch = cons.pop("arch")
        cons["ACC"] = getattr(tl, {"fp32": "float32", "fp64": "float64"}[cons["ACC"]])
        signature = {**sig, **dict.fromkeys(cons, "constexpr")}
        try:
            # the warps the launcher uses (dense: by block width; diagonal: the default)
            warps = triton_dense.num_warps(cons["BW"]) if "BW" in cons else 4
            kernel = triton.compile(
                ASTSource(fn=getattr(modules[mod], fn), signature=signature, constexprs=cons),
                target=GPUTarget("cuda", arch, 32), options={"num_warps": warps})
            results[name] = {"error": None, "local": _local_bytes(kernel.asm["cubin"])}
        except Exception as exc:  # reported to the test, which fails on it
            results[name] = {"error": f"{type(exc).__name__}: {exc}"[:2000], "local": None}
    return results


if __name__ == "__main__":
    os.environ.setdefault("TRITON_DEFAULT_FP_FUSION", "1")
    json.dump(compile_all(), sys.stdout)
