"""Run CUDA kernels on the CPU: the same source, compiled by g++, one thread after another.

This is exact for kernels whose threads are independent within a launch (no shared
memory, no ``__syncthreads``, no atomics, no warp intrinsics, every thread writing memory
that no other thread of the launch touches), such as those of
:mod:`pcrsolve.backends.cupy_kernels`: any serial order of the threads is then one of the
executions the GPU may perform. What is *not* emulated: concurrency itself (races are not
detected, although running the blocks backwards, ``backwards=True``, exposes an order
dependence), the memory model, launch limits (block size, registers), and device-only
intrinsics other than the few defined in the prelude below.

How it works: a prelude defines ``__global__``, ``__device__``, ``__forceinline__``,
``blockIdx``/``threadIdx``/``blockDim``/``gridDim`` (thread-local globals of a ``dim3``-like
struct) and the fused multiply-add intrinsics; the kernel signatures are read from the
preprocessed source (``g++ -E``), and for every ``extern "C"`` kernel an entry point
``pcr_emu_<name>(grid, block, backwards, params...)`` loops over the grid and the block
and calls it. The library is built with ``g++ -O1 -shared -fPIC``, cached in a temporary
directory under a hash of everything that went into it, and loaded with :mod:`ctypes`.
Arguments follow :meth:`cupy.RawKernel.__call__`: NumPy arrays for pointers (their dtype
must match the pointee), NumPy scalars of the declared width for scalars (a Python ``int``
is refused, as its C width would be a guess).

Examples
--------
>>> from cuda_emulation import launcher  # doctest: +SKIP
>>> from pcrsolve.backends.cupy_kernels import diagonal_scan  # doctest: +SKIP
>>> diagonal_scan(a, b, None, scalar=True, xp=numpy, launcher=launcher)  # doctest: +SKIP
"""

from __future__ import annotations

import ctypes
import hashlib
import os
import re
import shutil
import subprocess
import tempfile
from dataclasses import dataclass
from typing import Any

import numpy as np
import pytest

__all__ = ["EmulatedKernel", "Launcher", "compile_library", "launcher", "require_compiler"]

CXX = os.environ.get("CXX", "g++")
CXXFLAGS = ("-O1", "-shared", "-fPIC", "-std=c++14", "-ffp-contract=off", "-w")
SANITIZE_FLAGS = ("-fsanitize=undefined,bounds", "-fno-sanitize=vptr")

_PRELUDE = r"""
// ---- CPU emulation of the CUDA execution model (tests/cuda_emulation.py) ----
#include <math.h>
#define __global__
#define __device__
#define __host__
#define __forceinline__ inline __attribute__((always_inline))
// __restrict__ is a g++ keyword already.
struct pcr_emu_dim3 { unsigned int x, y, z; };
static thread_local pcr_emu_dim3 blockIdx, threadIdx, blockDim, gridDim;
static inline float __fmaf_rn(float a, float b, float c) { return fmaf(a, b, c); }
static inline double __fma_rn(double a, double b, double c) { return fma(a, b, c); }
#line 1 "kernel.cu"
"""

# C parameter type (after preprocessing, qualifiers removed) -> numpy scalar type
_SCALARS = {
    "int": np.int32, "unsigned int": np.uint32, "long long": np.int64,
    "unsigned long long": np.uint64, "float": np.float32, "double": np.float64,
    "bool": np.bool_,
}
_POINTEES = {"float": np.float32, "double": np.float64, "int": np.int32,
             "long long": np.int64}
_CTYPES = {np.int32: ctypes.c_int32, np.uint32: ctypes.c_uint32, np.int64: ctypes.c_int64,
           np.uint64: ctypes.c_uint64, np.float32: ctypes.c_float, np.float64: ctypes.c_double,
           np.bool_: ctypes.c_bool}


def require_compiler() -> str:
    """The path of the host C++ compiler; skips the calling test if there is none."""
    path = shutil.which(CXX)
    if path is None:
        pytest.skip(f"no host C++ compiler ({CXX!r}) to emulate CUDA kernels")
    return path


@dataclass(frozen=True)
class Param:
    """One kernel parameter: its C type (qualifiers dropped), name, and constness."""

    ctype: str
    name: str
    pointer: bool
    const: bool


def _parse_params(text: str) -> list[Param]:
    params = []
    for raw in (p.strip() for p in text.split(",")):
        if not raw or raw == "void":
            continue
        m = re.fullmatch(r"(.*?)([A-Za-z_]\w*)", raw, flags=re.S)
        if m is None:
            raise ValueError(f"cannot parse kernel parameter {raw!r}")
        decl, name = m.group(1), m.group(2)
        pointer = "*" in decl
        words = [w for w in re.findall(r"[A-Za-z_]\w*", decl)
                 if w not in ("const", "__restrict__", "__restrict", "volatile")]
        params.append(Param(" ".join(words), name, pointer, "const" in decl.split("*")[0]))
    return params


def _kernels(source: str, defines: tuple[str, ...]) -> dict[str, list[Param]]:
    """``{name: params}`` of the ``extern "C"`` kernels, read from the preprocessed source."""
    cmd = [require_compiler(), "-E", "-P", "-x", "c++", *defines, "-D__global__=",
           "-D__device__=", "-D__forceinline__=inline", "-"]
    done = subprocess.run(cmd, input=source, capture_output=True, text=True)
    if done.returncode != 0:
        raise RuntimeError(f"g++ could not preprocess the kernel source:\n{done.stderr}")
    text = done.stdout
    found = {}
    for m in re.finditer(r'extern\s+"C"\s+void\s+([A-Za-z_]\w*)\s*\(([^)]*)\)\s*\{', text):
        found[m.group(1)] = _parse_params(m.group(2))
    return found


def _entry_points(kernels: dict[str, list[Param]]) -> str:
    out = []
    for name, params in kernels.items():
        decl = ", ".join(
            f"{'const ' if p.const else ''}{p.ctype}{'*' if p.pointer else ''} {p.name}"
            for p in params)
        call = ", ".join(p.name for p in params)
        out.append(f"""
extern "C" void pcr_emu_{name}(unsigned int gx, unsigned int gy, unsigned int gz,
                               unsigned int bx, unsigned int by, unsigned int bz,
                               int backwards{', ' + decl if decl else ''}) {{
    gridDim = pcr_emu_dim3{{gx, gy, gz}};
    blockDim = pcr_emu_dim3{{bx, by, bz}};
    const unsigned long long n_blocks = (unsigned long long)gx * gy * gz;
    const unsigned long long n_threads = (unsigned long long)bx * by * bz;
    for (unsigned long long i = 0; i < n_blocks; ++i) {{
        const unsigned long long k = backwards ? n_blocks - 1 - i : i;
        blockIdx = pcr_emu_dim3{{(unsigned int)(k % gx), (unsigned int)(k / gx % gy),
                                 (unsigned int)(k / gx / gy)}};
        for (unsigned long long j = 0; j < n_threads; ++j) {{
            const unsigned long long t = backwards ? n_threads - 1 - j : j;
            threadIdx = pcr_emu_dim3{{(unsigned int)(t % bx), (unsigned int)(t / bx % by),
                                      (unsigned int)(t / bx / by)}};
            {name}({call});
        }}
    }}
}}
""")
    return "".join(out)


def _compiler_version(cxx: str) -> str:
    return subprocess.run([cxx, "--version"], capture_output=True, text=True).stdout


_LIBRARIES: dict[str, tuple[ctypes.CDLL, dict[str, list[Param]]]] = {}


def compile_library(source: str, options: tuple[str, ...] = (), sanitize: bool = False
                    ) -> tuple[ctypes.CDLL, dict[str, list[Param]]]:
    """Compile ``source`` for the CPU (cached); returns the library and its kernels.

    Parameters
    ----------
    source : str
        CUDA C++ source (no headers, no shared memory, no synchronisation).
    options : tuple of str
        Compiler options meant for NVRTC; only ``-D``/``--define-macro`` ones are honoured.
    sanitize : bool, default False
        Build with ``-fsanitize=undefined,bounds`` (out-of-range indices into the kernels'
        local arrays, signed overflow, ...); reports go to the process's stderr as
        ``runtime error: ...`` and execution continues.

    Returns
    -------
    (ctypes.CDLL, dict)
        The library and ``{kernel name: parameters}``.
    """
    cxx = require_compiler()
    defines = []
    for opt in options:
        if opt.startswith("-D"):
            defines.append(opt)
        elif opt.startswith("--define-macro="):
            defines.append("-D" + opt.split("=", 1)[1])
    defines_t = tuple(defines)
    flags = CXXFLAGS + (SANITIZE_FLAGS if sanitize else ())
    key = hashlib.sha256("\0".join([_compiler_version(cxx), *flags, *defines_t, _PRELUDE,
                                    source]).encode()).hexdigest()[:24]
    if key in _LIBRARIES:
        return _LIBRARIES[key]
    kernels = _kernels(source, defines_t)
    cache = os.path.join(tempfile.gettempdir(), "pcrsolve-cuda-emulation")
    os.makedirs(cache, exist_ok=True)
    lib_path = os.path.join(cache, f"{key}.so")
    if not os.path.exists(lib_path):
        full = _PRELUDE + source + "\n" + _entry_points(kernels)
        src_path = os.path.join(cache, f"{key}.{os.getpid()}.cpp")
        tmp_path = os.path.join(cache, f"{key}.{os.getpid()}.so")
        with open(src_path, "w") as f:
            f.write(full)
        done = subprocess.run([cxx, *flags, *defines_t, src_path, "-o", tmp_path],
                              capture_output=True, text=True)
        if done.returncode != 0:
            raise RuntimeError(f"g++ could not compile the kernel source ({src_path}):\n"
                               f"{done.stderr}")
        os.replace(tmp_path, lib_path)  # atomic: concurrent test processes agree
        os.remove(src_path)
    lib = ctypes.CDLL(lib_path)
    _LIBRARIES[key] = (lib, kernels)
    return lib, kernels


def _dims(value: Any, what: str) -> tuple[int, int, int]:
    dims = (value,) if isinstance(value, (int, np.integer)) else tuple(value)
    if not 1 <= len(dims) <= 3 or any(int(d) < 1 for d in dims):
        raise ValueError(f"`{what}` must be 1 to 3 positive ints; got {value!r}")
    return tuple(int(d) for d in (*dims, 1, 1)[:3])  # type: ignore[return-value]


GUARD = 64  # poisoned elements on either side of every guarded array argument


class _Guarded:
    """A copy of an array argument inside a buffer of poison bytes (0xFF: a NaN as a float).

    The copy has the argument's strides, so the kernel sees the same layout; reads outside
    the array's elements return NaN (and spoil the result), and writes outside them are
    found afterwards by :meth:`check`.
    """

    def __init__(self, arr: np.ndarray) -> None:
        item = arr.itemsize
        est = [st // item for st in arr.strides]
        lo = sum(min(0, (n - 1) * st) for n, st in zip(arr.shape, est, strict=True))
        hi = sum(max(0, (n - 1) * st) for n, st in zip(arr.shape, est, strict=True)) + 1
        if arr.size == 0:
            lo, hi = 0, 0
        self.arr = arr
        self.buf = np.empty(GUARD + hi - lo + GUARD, dtype=arr.dtype)
        self.buf.view(np.uint8)[:] = 0xFF
        first = GUARD - lo  # index in buf of the element arr[0, ..., 0]
        self.view = np.lib.stride_tricks.as_strided(self.buf[first:], arr.shape, arr.strides)
        mask = np.zeros(len(self.buf), dtype=bool)
        np.lib.stride_tricks.as_strided(mask[first:], arr.shape, tuple(est))[...] = True
        self.outside = ~mask
        if arr.size:
            self.view[...] = arr

    def check(self, where: str) -> None:
        """Raise if anything outside the array's elements changed; copy the elements back."""
        rows = self.buf.view(np.uint8).reshape(len(self.buf), self.buf.itemsize)
        bad = np.flatnonzero(np.any(rows[self.outside] != 0xFF, axis=1))
        if bad.size:
            raise AssertionError(f"{where}: the kernel wrote {bad.size} element(s) outside the "
                                 f"array (shape {self.arr.shape}, strides {self.arr.strides})")
        if self.arr.flags.writeable and self.arr.size:
            self.arr[...] = self.view


class EmulatedKernel:
    """One kernel of an emulated library, called like :class:`cupy.RawKernel`.

    Parameters
    ----------
    lib : ctypes.CDLL
    name : str
    params : list of Param
    backwards : bool, default False
        Run the blocks, and the threads of each block, in reverse order.
    guard : bool, default True
        Pass every array as a :class:`_Guarded` copy (out-of-bounds reads give NaN,
        out-of-bounds writes raise ``AssertionError``).
    """

    def __init__(self, lib: ctypes.CDLL, name: str, params: list[Param],
                 backwards: bool = False, guard: bool = True) -> None:
        self.name, self.params = name, params
        self.backwards, self.guard = backwards, guard
        self._fn = getattr(lib, f"pcr_emu_{name}")
        self._fn.restype = None

    def _check_array(self, param: Param, value: Any) -> None:
        where = f"kernel {self.name!r}, parameter {param.name!r} ({param.ctype}*)"
        if not isinstance(value, np.ndarray):
            raise TypeError(f"{where} needs a numpy array; got {type(value).__name__}")
        want = _POINTEES.get(param.ctype)
        if want is None or value.dtype != np.dtype(want):
            raise TypeError(f"{where} needs dtype {np.dtype(want) if want else '?'}; "
                            f"got {value.dtype}")
        if any(st % value.itemsize for st in value.strides):
            raise TypeError(f"{where}: strides {value.strides} are not whole elements")
        if not param.const and not value.flags.writeable:
            raise TypeError(f"{where} is written to; got a read-only array")

    def _scalar(self, param: Param, value: Any) -> Any:
        want = _SCALARS.get(param.ctype)
        where = f"kernel {self.name!r}, parameter {param.name!r} ({param.ctype})"
        if want is None:
            raise TypeError(f"{where} has a type the emulator does not know")
        if not isinstance(value, np.generic) or value.dtype != np.dtype(want):
            raise TypeError(f"{where} needs a numpy.{np.dtype(want).name} scalar; got "
                            f"{type(value).__name__} {value!r}")
        return _CTYPES[want](value.item())

    def __call__(self, grid: Any, block: Any, args: tuple[Any, ...], **kwargs: Any) -> None:
        """Launch over ``grid`` x ``block`` threads, one after another."""
        if len(args) != len(self.params):
            raise TypeError(f"kernel {self.name!r} takes {len(self.params)} arguments; got "
                            f"{len(args)}")
        converted, guarded = [], []
        for param, value in zip(self.params, args, strict=True):
            if not param.pointer:
                converted.append(self._scalar(param, value))
                continue
            self._check_array(param, value)
            if self.guard:
                g = _Guarded(value)
                guarded.append((param, g))
                value = g.view
            converted.append(ctypes.c_void_p(value.ctypes.data))
        g3, b3 = _dims(grid, "grid"), _dims(block, "block")
        self._fn(*(ctypes.c_uint(d) for d in (*g3, *b3)), ctypes.c_int(int(self.backwards)),
                 *converted)
        for param, g in guarded:
            g.check(f"kernel {self.name!r}, parameter {param.name!r}")


class Launcher:
    """A kernel launcher for the drivers of :mod:`pcrsolve.backends.cupy_kernels`.

    ``launcher(source, name, options)`` returns an :class:`EmulatedKernel`, called as
    ``kernel(grid, block, args)`` like :class:`cupy.RawKernel`.

    Parameters
    ----------
    backwards : bool, default False
        Run blocks and threads in reverse order.
    guard : bool, default True
        Guard every array argument against out-of-bounds access (see :class:`_Guarded`).
    sanitize : bool, default False
        Build with UBSan (see :func:`compile_library`).

    Attributes
    ----------
    launches : list of str
        The kernel names handed out, in order.
    """

    def __init__(self, backwards: bool = False, guard: bool = True,
                 sanitize: bool = False) -> None:
        self.backwards, self.guard, self.sanitize = backwards, guard, sanitize
        self.launches: list[str] = []

    def __call__(self, source: str, name: str, options: tuple[str, ...] = ()) -> Any:
        lib, kernels = compile_library(source, tuple(options), sanitize=self.sanitize)
        if name not in kernels:
            raise KeyError(f"no extern \"C\" kernel {name!r} in the source; found "
                           f"{sorted(kernels)}")
        self.launches.append(name)
        return EmulatedKernel(lib, name, kernels[name], self.backwards, self.guard)


#: the default emulating launcher (threads in their natural order, guarded arrays)
launcher = Launcher()
