"""Mutation testing of pcrsolve's core: plant one small bug at a time, see whether a test fails.

Outside CI (it runs pytest once per mutant: slow on 2 cores). Self-contained: no mutmut or
cosmic-ray, only the standard library and the repository's own test suite.

How it works
------------
1. The package is copied to a temporary directory (``pcrsolve/``, ``backends/``,
   ``tests/``, ``pyproject.toml``: from the working tree, or from ``git archive HEAD`` with
   ``--snapshot head``). Nothing in the repository is ever modified; tests run in the
   copy with the copy first on ``PYTHONPATH`` and the copy as the working directory, so
   the copy (not the editable install) is imported; this is checked before any mutant
   runs, and ``--self-check`` plants an obvious bug to show that the tests see it.
2. Mutants are generated from each module's AST: comparison flips (``<`` <-> ``<=``,
   ``==`` <-> ``!=``, ``is``/``in`` negated), arithmetic swaps (``+`` <-> ``-``,
   ``*`` <-> ``/``, ``//`` -> ``*``, ``**`` -> ``*``, ``&`` <-> ``|``, also augmented
   assignments), constant tweaks (``0`` <-> ``1``, ``n -> n + 1``, floats ``0 -> 1``,
   ``f -> 2 f``, ``True`` <-> ``False``), ``and`` <-> ``or``, dropping a ``not``, a unary
   minus or a ``~``, negating an ``if``/``while``/conditional-expression test,
   ``min`` <-> ``max``, slice bounds off by one, ``return x`` -> ``return None``, deleting
   a call statement or a re-assignment of a name. Skipped: docstrings and every string
   constant (error messages), ``raise`` and ``assert`` statements, f-strings, logging and
   ``warnings`` calls, type annotations, decorators, imports, ``__all__``, and the
   bodies of compiled kernels (``@njit``, ``@triton.jit``: device code, not host code).
3. For each mutant: write it into the copy, run the module's mapped fast test subset
   (``pytest -x -q``, fixed hypothesis seed, per-mutant timeout: a timeout counts as
   killed and is noted), and restore the file. A mutant that survives the fast subset
   is run again against the module's full test files (``"full"`` tier) before it is
   called a survivor.
4. Results: a JSON file (every mutant: file, line, operator, original and mutated source,
   outcome, seconds) and a summary table per module with the kill rate and its 95%
   Wilson interval (the binomial interval that applies when ``--sample`` draws a random
   subset of the mutants).

Numba: ``backends/numba_kernels.py`` compiles its kernels with ``cache=True``. Mutants of
its host functions keep the file's size and modification time (a padding comment absorbs
the length change), so numba reuses the kernels compiled by the baseline run instead of
recompiling them for every mutant; bytecode caching is off (``PYTHONDONTWRITEBYTECODE``),
so Python itself always reads the mutated source.

Usage
-----
::

    python scripts/mutation.py --list                      # count mutants per module
    python scripts/mutation.py --self-check   # the copy is imported; a planted bug is caught
    python scripts/mutation.py --sample 200 --seed 1 --out mutation.json
    python scripts/mutation.py --modules pcrsolve/linear/cr.py --timeout 120
    python scripts/mutation.py --rerun mutation.json       # only the survivors of an earlier run

Options: ``--modules`` (files or folders, default the core), ``--sample N --seed S``,
``--jobs J`` (default 1: one copy and one pytest per job), ``--timeout`` (seconds per
mutant; default 3x the module's baseline + 30), ``--snapshot {worktree,head}``,
``--tiers fast`` (skip the second tier), ``--tests`` (override the mapped test files).

Run for issue 14
----------------
``--snapshot head --sample 150 --seed 1 --tiers fast`` over the default modules (a random
sample of 150 of the 1088 mutants; 52 minutes on the loaded 2-core machine): 110 killed,
73.3% (95% Wilson interval 65.7-79.8%). Of the 40 survivors, 24 are killed by the tests
added for them (``tests/test_mutants_*.py``, ``test_auto_regimes.py``; re-run with
``--rerun``) and 16 are equivalent or performance-only: ``copy=True`` for ``copy=False``
(5), ``zip(strict=False)`` on equal lengths, the structure hint's ``A.ndim`` guard, the
dense branch taken before ``block_ndim <= 2`` matters, Triton feature blocks that are
powers of two (``> 8`` vs ``> 9``), ``next_power_of_2`` of 0 or 1 under the 16-step floor,
four ways of calling ``contiguous()`` on an array whose strides the kernel reads anyway,
``1 - q`` stored where only ``q < 1`` reads it; and ``to_dense``'s limit 20 000 -> 20 001
(its accepting side needs a 3.2 GB matrix). Kill rate afterwards: 134/150 = 89.3%
(83.4-93.3%); on the non-equivalent mutants 134/135 = 99.3% (95.9-99.9%).
"""

from __future__ import annotations

import argparse
import ast
import copy
import json
import math
import os
import random
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

#: The core, in the order the run takes it (the Newton loop last: it is the slowest to test).
DEFAULT_MODULES = [
    "pcrsolve/linear/sequential.py",
    "pcrsolve/linear/pcr.py",
    "pcrsolve/linear/cr.py",
    "pcrsolve/linear/chunked.py",
    "pcrsolve/linear/auto.py",
    "pcrsolve/linear/__init__.py",
    "pcrsolve/system.py",
    "backends/numba_kernels.py",
    "backends/triton_scan.py",
    "pcrsolve/stopping.py",
    "pcrsolve/newton.py",
]

_LINEAR_FAST = ["tests/test_linear.py", "tests/test_mutants_*.py", "tests/test_auto_regimes.py"]
_NEWTON_FAST = [
    "tests/test_newton.py", "tests/test_default_tolerance.py", "tests/test_mutants_*.py",
    "-k", "not stable_logistic_maps and not chaotic_maps and not torch-cpu",
]


@dataclass
class TestPlan:
    """Which tests judge a module's mutants: a fast subset, then the full files."""

    fast: list[str]
    full: list[str] = field(default_factory=list)


#: Module (or folder prefix) -> tests. Globs are expanded in the copy; missing files dropped.
TEST_MAP: dict[str, TestPlan] = {
    "pcrsolve/linear/": TestPlan(_LINEAR_FAST, [*_LINEAR_FAST, "tests/test_sequential_lean.py",
                                                "tests/test_errors.py",
                                                "tests/test_numba_kernels.py"]),
    "pcrsolve/system.py": TestPlan(
        ["tests/test_linear.py", "tests/test_mutants_*.py", "tests/test_errors.py"],
        ["tests/test_linear.py", "tests/test_mutants_*.py", "tests/test_errors.py",
         "tests/test_gradients.py", "tests/test_tridiagonal.py"]),
    "backends/numba_kernels.py": TestPlan(
        ["tests/test_numba_kernels.py", "tests/test_mutants_*.py",
         "-k", "not linear_suite_passes_without_numba"],
        ["tests/test_numba_kernels.py", "tests/test_mutants_*.py", "tests/test_auto_regimes.py",
         "tests/test_linear.py"]),
    "backends/triton_scan.py": TestPlan(["tests/test_kernels.py", "tests/test_mutants_*.py"],
                                        ["tests/test_kernels.py", "tests/test_mutants_*.py",
                                         "tests/test_linear.py"]),
    "pcrsolve/stopping.py": TestPlan(_NEWTON_FAST,
                                     ["tests/test_newton.py", "tests/test_mutants_*.py",
                                      "tests/test_default_tolerance.py", "tests/test_errors.py"]),
    "pcrsolve/newton.py": TestPlan([*_NEWTON_FAST, "tests/test_errors.py"],
                                   ["tests/test_newton.py", "tests/test_mutants_*.py",
                                    "tests/test_errors.py", "tests/test_fixed.py",
                                    "tests/test_gradients.py"]),
}

_SKIP_CALL_ROOTS = {"log", "logger", "logging", "warnings", "_log", "LOG"}
_KERNEL_DECORATORS = {"njit", "jit", "vectorize", "guvectorize", "cfunc"}

_CMP_SWAP = {
    ast.Lt: ast.LtE, ast.LtE: ast.Lt, ast.Gt: ast.GtE, ast.GtE: ast.Gt,
    ast.Eq: ast.NotEq, ast.NotEq: ast.Eq, ast.Is: ast.IsNot, ast.IsNot: ast.Is,
    ast.In: ast.NotIn, ast.NotIn: ast.In,
}
_BIN_SWAP = {
    ast.Add: ast.Sub, ast.Sub: ast.Add, ast.Mult: ast.Div, ast.Div: ast.Mult,
    ast.FloorDiv: ast.Mult, ast.Pow: ast.Mult, ast.Mod: ast.FloorDiv,
    ast.BitAnd: ast.BitOr, ast.BitOr: ast.BitAnd, ast.LShift: ast.RShift,
    ast.RShift: ast.LShift,
}
_SYM = {
    ast.Lt: "<", ast.LtE: "<=", ast.Gt: ">", ast.GtE: ">=", ast.Eq: "==", ast.NotEq: "!=",
    ast.Is: "is", ast.IsNot: "is not", ast.In: "in", ast.NotIn: "not in", ast.Add: "+",
    ast.Sub: "-", ast.Mult: "*", ast.Div: "/", ast.FloorDiv: "//", ast.Pow: "**",
    ast.Mod: "%", ast.BitAnd: "&", ast.BitOr: "|", ast.LShift: "<<", ast.RShift: ">>",
    ast.And: "and", ast.Or: "or",
}


# ----------------------------------------------------------------------------------------
# Mutant generation
# ----------------------------------------------------------------------------------------
@dataclass
class Mutant:
    """One planted bug: replace bytes ``start:end`` of ``path`` by ``replacement``."""

    path: str
    line: int
    col: int
    end: int
    start: int
    op: str
    replacement: str
    original: str = ""
    mutated: str = ""
    host_numba: bool = False  # in a host function of a numba module (cache trick applies)
    outcome: str = "pending"  # killed, survived, timeout, error, stale
    tier: str = ""  # "fast" or "full": the test set that decided
    seconds: float = 0.0
    detail: str = ""

    @property
    def key(self) -> str:
        return f"{self.path}:{self.line}:{self.col}:{self.op}:{self.replacement}"


class _Collector:
    """Walks one module's AST and yields mutants (see the module docstring for the rules)."""

    def __init__(self, path: str, source: bytes) -> None:
        self.path = path
        self.source = source
        self.tree = ast.parse(source)
        self.lines = source.split(b"\n")
        self.offsets = [0]
        for ln in self.lines:
            self.offsets.append(self.offsets[-1] + len(ln) + 1)
        self.numba_module = b"numba" in source
        self.out: list[Mutant] = []
        self._fn_stack: list[ast.AST] = []

    # positions ---------------------------------------------------------------------------
    def _span(self, node: ast.AST) -> tuple[int, int]:
        start = self.offsets[node.lineno - 1] + node.col_offset
        end = self.offsets[node.end_lineno - 1] + node.end_col_offset
        return start, end

    def _add(self, node: ast.AST, op: str, replacement: str, span: tuple[int, int] | None = None,
             line_node: ast.AST | None = None) -> None:
        start, end = span or self._span(node)
        ref = line_node or node
        text = self.source[:start] + replacement.encode() + self.source[end:]
        try:
            new_tree = ast.parse(text)
        except SyntaxError:
            return
        if ast.dump(new_tree) == ast.dump(self.tree):
            return
        original = " ".join(
            ln.decode(errors="replace").strip()
            for ln in self.lines[ref.lineno - 1 : ref.end_lineno]
        )
        mutated = text.split(b"\n")[ref.lineno - 1].decode(errors="replace").strip()
        # kernels and the globals they read are never mutated: the rest is host code
        host = self.numba_module
        self.out.append(Mutant(self.path, ref.lineno, ref.col_offset, end, start, op,
                               replacement, original[:200], mutated[:200], host))

    # walking -----------------------------------------------------------------------------
    def collect(self) -> list[Mutant]:
        # module-level names that compiled kernels read are frozen into the compiled code:
        # they belong to the kernels, not to the host code
        self.kernel_globals = {
            n.id for fn in ast.walk(self.tree)
            if isinstance(fn, ast.FunctionDef) and self._is_kernel(fn)
            for n in ast.walk(fn) if isinstance(n, ast.Name)}
        self._body(self.tree.body, docstring_ok=True)
        return self.out

    def _body(self, stmts: list[ast.stmt], docstring_ok: bool = False) -> None:
        for i, stmt in enumerate(stmts):
            if (i == 0 and docstring_ok and isinstance(stmt, ast.Expr)
                    and isinstance(stmt.value, ast.Constant)
                    and isinstance(stmt.value.value, str)):
                continue
            self._stmt(stmt)

    def _is_kernel(self, fn: ast.AST) -> bool:
        for dec in getattr(fn, "decorator_list", []):
            target = dec.func if isinstance(dec, ast.Call) else dec
            name = target.attr if isinstance(target, ast.Attribute) else getattr(target, "id", "")
            if name in _KERNEL_DECORATORS:
                return True
        return False

    def _assigned_before(self, name: str, stmt: ast.stmt) -> bool:
        """Whether ``name`` is bound earlier in the enclosing function (an argument or a store)."""
        if not self._fn_stack:
            return False
        fn = self._fn_stack[-1]
        args = fn.args
        every = [*args.posonlyargs, *args.args, *args.kwonlyargs, args.vararg, args.kwarg]
        if any(a is not None and a.arg == name for a in every):
            return True
        for node in ast.walk(fn):
            if (isinstance(node, ast.Name) and node.id == name
                    and isinstance(node.ctx, ast.Store)
                    and (node.lineno, node.col_offset) < (stmt.lineno, stmt.col_offset)):
                return True
        return False

    def _stmt(self, stmt: ast.stmt) -> None:
        if isinstance(stmt, (ast.Import, ast.ImportFrom, ast.Raise, ast.Assert, ast.Global,
                             ast.Nonlocal, ast.Pass, ast.Break, ast.Continue)):
            return
        if isinstance(stmt, (ast.FunctionDef, ast.AsyncFunctionDef)):
            if self._is_kernel(stmt):
                return  # compiled device code, not host code
            self._fn_stack.append(stmt)
            for d in stmt.args.defaults + [d for d in stmt.args.kw_defaults if d is not None]:
                self._expr(d)
            self._body(stmt.body, docstring_ok=True)
            self._fn_stack.pop()
            return
        if isinstance(stmt, ast.ClassDef):
            self._body(stmt.body, docstring_ok=True)
            return
        if isinstance(stmt, ast.Expr):
            if isinstance(stmt.value, ast.Constant):
                return
            if isinstance(stmt.value, ast.Call):
                if self._skip_call(stmt.value):
                    return
                self._add(stmt, "stmt-del", "pass")
            self._expr(stmt.value)
            return
        if isinstance(stmt, ast.Assign):
            if any(isinstance(t, ast.Name) and t.id == "__all__" for t in stmt.targets):
                return
            if not self._fn_stack and any(isinstance(t, ast.Name) and t.id in
                                          self.kernel_globals for t in stmt.targets):
                return
            if (len(stmt.targets) == 1 and isinstance(stmt.targets[0], ast.Name)
                    and self._assigned_before(stmt.targets[0].id, stmt)):
                self._add(stmt, "stmt-del", "pass")
            self._expr(stmt.value)
            for t in stmt.targets:
                self._targets(t)
            return
        if isinstance(stmt, ast.AnnAssign):
            if isinstance(stmt.target, ast.Name) and stmt.target.id == "__all__":
                return
            if stmt.value is not None:
                self._expr(stmt.value)
            return
        if isinstance(stmt, ast.AugAssign):
            swap = _BIN_SWAP.get(type(stmt.op))
            if swap is not None:
                new = copy.deepcopy(stmt)
                new.op = swap()
                self._add(stmt, f"augop {_SYM[type(stmt.op)]}= -> {_SYM[swap]}=",
                          ast.unparse(new))
            self._expr(stmt.value)
            return
        if isinstance(stmt, ast.Return):
            if stmt.value is not None and not (isinstance(stmt.value, ast.Constant)
                                               and stmt.value.value is None):
                self._add(stmt, "return-None", "return None")
                self._expr(stmt.value)
            return
        if isinstance(stmt, (ast.If, ast.While)):
            if not self._is_type_checking(stmt.test):
                self._add(stmt.test, "negate-cond", f"not ({ast.unparse(stmt.test)})",
                          line_node=stmt.test)
                self._expr(stmt.test)
            self._body(stmt.body)
            self._body(stmt.orelse)
            return
        if isinstance(stmt, (ast.For, ast.AsyncFor)):
            self._expr(stmt.iter)
            self._body(stmt.body)
            self._body(stmt.orelse)
            return
        if isinstance(stmt, (ast.With, ast.AsyncWith)):
            for item in stmt.items:
                self._expr(item.context_expr)
            self._body(stmt.body)
            return
        if isinstance(stmt, ast.Try):
            self._body(stmt.body)
            for h in stmt.handlers:
                self._body(h.body)
            self._body(stmt.orelse)
            self._body(stmt.finalbody)
            return
        if isinstance(stmt, ast.Delete):
            return
        for child in ast.iter_child_nodes(stmt):  # anything else: its expressions
            if isinstance(child, ast.expr):
                self._expr(child)

    @staticmethod
    def _is_type_checking(test: ast.expr) -> bool:
        return isinstance(test, ast.Name) and test.id == "TYPE_CHECKING"

    @staticmethod
    def _skip_call(call: ast.Call) -> bool:
        f = call.func
        while isinstance(f, ast.Attribute):
            f = f.value
        return isinstance(f, ast.Name) and f.id in _SKIP_CALL_ROOTS

    def _targets(self, t: ast.expr) -> None:
        """Subscript targets hold index expressions worth mutating."""
        if isinstance(t, ast.Subscript):
            self._expr(t.slice)
        elif isinstance(t, (ast.Tuple, ast.List)):
            for e in t.elts:
                self._targets(e)

    def _expr(self, node: ast.expr) -> None:
        if isinstance(node, ast.JoinedStr):
            return
        if isinstance(node, ast.Call) and self._skip_call(node):
            return
        if isinstance(node, ast.Compare):
            for i, op in enumerate(node.ops):
                swap = _CMP_SWAP.get(type(op))
                if swap is None:
                    continue
                new = copy.deepcopy(node)
                new.ops[i] = swap()
                self._add(node, f"cmp {_SYM[type(op)]} -> {_SYM[swap]}",
                          f"({ast.unparse(new)})")
        elif isinstance(node, ast.BinOp):
            swap = _BIN_SWAP.get(type(node.op))
            if swap is not None:
                new = copy.deepcopy(node)
                new.op = swap()
                self._add(node, f"binop {_SYM[type(node.op)]} -> {_SYM[swap]}",
                          f"({ast.unparse(new)})")
        elif isinstance(node, ast.BoolOp):
            new = copy.deepcopy(node)
            new.op = ast.Or() if isinstance(node.op, ast.And) else ast.And()
            self._add(node, f"boolop {_SYM[type(node.op)]} -> {_SYM[type(new.op)]}",
                      f"({ast.unparse(new)})")
        elif isinstance(node, ast.UnaryOp):
            names = {ast.Not: "not", ast.USub: "-", ast.Invert: "~"}
            name = names.get(type(node.op))
            if name is not None and not (name == "-" and isinstance(node.operand, ast.Constant)
                                         and self._numeric(node.operand) is None):
                self._add(node, f"drop {name}", f"({ast.unparse(node.operand)})")
        elif isinstance(node, ast.IfExp):
            self._add(node.test, "negate-cond", f"(not ({ast.unparse(node.test)}))")
        elif isinstance(node, ast.Constant):
            new = self._numeric(node)
            if new is not None:
                self._add(node, f"const {node.value!r} -> {new!r}", repr(new))
            return
        elif isinstance(node, ast.Call):
            if isinstance(node.func, ast.Name) and node.func.id in ("min", "max"):
                other = "max" if node.func.id == "min" else "min"
                self._add(node.func, f"call {node.func.id} -> {other}", other,
                          line_node=node)
        elif isinstance(node, ast.Slice):
            for bound in (node.lower, node.upper):
                if bound is None or isinstance(bound, ast.Constant) or (
                        isinstance(bound, ast.UnaryOp) and isinstance(bound.operand,
                                                                      ast.Constant)):
                    continue  # literal bounds: the constant tweaks cover them
                self._add(bound, "slice +1", f"({ast.unparse(bound)}) + 1")
        for child in ast.iter_child_nodes(node):
            if isinstance(child, ast.expr):
                self._expr(child)
            elif isinstance(child, ast.keyword):
                self._expr(child.value)
            elif isinstance(child, ast.comprehension):
                self._expr(child.iter)
                for cond in child.ifs:
                    self._expr(cond)

    @staticmethod
    def _numeric(node: ast.Constant) -> object | None:
        v = node.value
        if isinstance(v, bool):
            return not v
        if isinstance(v, int):
            return {0: 1, 1: 0}.get(v, v + 1)
        if isinstance(v, float):
            if v == 0.0:
                return 1.0
            if math.isinf(v) or math.isnan(v):
                return None
            return v * 2.0
        return None


def _module_files(spec: list[str]) -> list[str]:
    """Expand folders to their ``.py`` files, relative to the repository root, in order."""
    out: list[str] = []
    for item in spec:
        path = os.path.join(ROOT, item)
        if os.path.isdir(path):
            for name in sorted(os.listdir(path)):
                if name.endswith(".py"):
                    out.append(os.path.relpath(os.path.join(path, name), ROOT))
        else:
            out.append(os.path.relpath(path, ROOT))
    return list(dict.fromkeys(out))


def generate(paths: list[str], base: str) -> list[Mutant]:
    """All mutants of ``paths`` (relative), read from the copy at ``base``."""
    mutants: list[Mutant] = []
    for rel in paths:
        with open(os.path.join(base, rel), "rb") as fh:
            mutants.extend(_Collector(rel, fh.read()).collect())
    return mutants


# ----------------------------------------------------------------------------------------
# The copy and the test runs
# ----------------------------------------------------------------------------------------
def make_copy(snapshot: str) -> str:
    """A fresh copy of the package and its tests in a temporary directory."""
    dest = tempfile.mkdtemp(prefix="pcrsolve-mutation-")
    if snapshot == "head":
        archive = subprocess.run(
            ["git", "-C", ROOT, "archive", "HEAD", "pcrsolve", "backends", "tests",
             "pyproject.toml"], check=True, capture_output=True).stdout
        subprocess.run(["tar", "-x", "-C", dest], input=archive, check=True)
    else:
        ignore = shutil.ignore_patterns("__pycache__", "*.pyc", ".hypothesis", "*.egg-info")
        for name in ("pcrsolve", "backends", "tests"):
            shutil.copytree(os.path.join(ROOT, name), os.path.join(dest, name), ignore=ignore)
        shutil.copy2(os.path.join(ROOT, "pyproject.toml"), dest)
    return dest


def _env(base: str) -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = base + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    env["PYTHONDONTWRITEBYTECODE"] = "1"
    env.pop("PYTHONSTARTUP", None)
    return env


def check_imports(base: str) -> None:
    """Fail unless ``pcrsolve`` and ``pcrsolve.backends`` are imported from the copy."""
    code = ("import sys, pcrsolve, pcrsolve.backends, pcrsolve.linear.cr;"
            "[print(sys.modules[n].__file__) for n in "
            "('pcrsolve', 'pcrsolve.backends', 'pcrsolve.linear.cr')]")
    res = subprocess.run([sys.executable, "-c", code], cwd=base, env=_env(base),
                         capture_output=True, text=True, check=True)
    files = res.stdout.split()
    real = os.path.realpath(base)
    bad = [f for f in files if not os.path.realpath(f).startswith(real + os.sep)]
    if len(files) != 3 or bad:
        raise SystemExit(f"the copy is not what gets imported: {files}")


def plan_for(rel: str) -> TestPlan:
    best = ""
    for prefix in TEST_MAP:
        if rel.startswith(prefix) and len(prefix) > len(best):
            best = prefix
    if not best:
        raise SystemExit(f"no tests are mapped to {rel}; add it to TEST_MAP or pass --tests")
    return TEST_MAP[best]


def _expand(args: list[str], base: str) -> list[str]:
    import glob

    out: list[str] = []
    for a in args:
        if a.startswith("tests/"):
            out.extend(sorted(os.path.relpath(p, base) for p in glob.glob(os.path.join(base, a))))
        else:
            out.append(a)
    return out


def pytest_cmd(tests: list[str], base: str) -> list[str]:
    return [sys.executable, "-m", "pytest", "-x", "-q", "-p", "no:cacheprovider",
            "--hypothesis-seed=0", "--no-header", "-o", "addopts=", *_expand(tests, base)]


_RUNNING: set[subprocess.Popen] = set()  # pytest runs in flight (killed on SIGTERM/exit)


_STOP = threading.Event()  # set on SIGTERM: no further mutant starts


def _on_sigterm(*_: object) -> None:
    _STOP.set()
    _kill_running()
    sys.exit(143)


def _kill_running() -> None:
    for proc in list(_RUNNING):
        try:
            os.killpg(proc.pid, 9)
        except ProcessLookupError:
            pass


def run_tests(tests: list[str], base: str, timeout: float) -> tuple[str, float, str]:
    """``(outcome, seconds, last lines)`` of one pytest run in the copy."""
    t0 = time.monotonic()
    proc = subprocess.Popen(pytest_cmd(tests, base), cwd=base, env=_env(base),
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            start_new_session=True)
    _RUNNING.add(proc)
    try:
        out, _ = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, 9)
        proc.communicate()
        return "timeout", time.monotonic() - t0, ""
    finally:
        _RUNNING.discard(proc)
    tail = out.decode(errors="replace").strip().splitlines()[-3:]
    seconds = time.monotonic() - t0
    # pytest: 0 all passed, 1 a test failed, 2 interrupted (collection error), 5 no tests
    outcome = {0: "survived", 1: "killed", 2: "killed"}.get(proc.returncode, "error")
    return outcome, seconds, " | ".join(tail)[-300:]


class Workspace:
    """One copy of the package, and the bookkeeping to mutate its files and put them back."""

    PAD = 256  # bytes of padding comment at the end of numba modules (see module docstring)

    def __init__(self, snapshot: str, paths: list[str]) -> None:
        self.base = make_copy(snapshot)
        self.original: dict[str, bytes] = {}
        self.stamp: dict[str, int] = {}
        for rel in paths:
            full = os.path.join(self.base, rel)
            with open(full, "rb") as fh:
                data = fh.read()
            if b"numba" in data:  # fixed size and mtime: numba keeps its cached kernels
                data = data.rstrip(b"\n") + b"\n# mutation padding" + b" " * self.PAD + b"\n"
                with open(full, "wb") as fh:
                    fh.write(data)
            self.original[rel] = data
            self.stamp[rel] = os.stat(full).st_mtime_ns

    def source(self, rel: str) -> bytes:
        return self.original[rel]

    def apply(self, m: Mutant) -> None:
        data = self.original[m.path]
        text = data[: m.start] + m.replacement.encode() + data[m.end :]
        grow = len(text) - len(data)
        keep = m.host_numba and grow <= self.PAD and data.endswith(b" " * self.PAD + b"\n")
        if keep:  # absorb the change of length in the padding comment
            text = text[: -(self.PAD + 1)] + b" " * (self.PAD - grow) + b"\n"
            assert len(text) == len(data)
        self._write(m.path, text, keep)

    def restore(self, rel: str) -> None:
        self._write(rel, self.original[rel], True)

    def _write(self, rel: str, data: bytes, keep_stamp: bool) -> None:
        full = os.path.join(self.base, rel)
        with open(full, "wb") as fh:
            fh.write(data)
        if keep_stamp:
            os.utime(full, ns=(self.stamp[rel], self.stamp[rel]))
        else:  # a new stamp: numba recompiles (the mutant may touch compiled code)
            now = time.time_ns()
            os.utime(full, ns=(now, now))

    def close(self) -> None:
        shutil.rmtree(self.base, ignore_errors=True)


# ----------------------------------------------------------------------------------------
# Reporting
# ----------------------------------------------------------------------------------------
def wilson(k: int, n: int, z: float = 1.96) -> tuple[float, float]:
    """The 95% Wilson score interval of a binomial proportion ``k / n``."""
    if n == 0:
        return 0.0, 1.0
    p = k / n
    d = 1 + z * z / n
    c = (p + z * z / (2 * n)) / d
    h = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / d
    return max(0.0, c - h), min(1.0, c + h)


def summary(mutants: list[Mutant], population: dict[str, int]) -> str:
    rows = ["module                              total  sampled  killed  timeout  survived"
            "   rate   95% interval"]
    groups: dict[str, list[Mutant]] = {}
    for m in mutants:
        groups.setdefault(m.path, []).append(m)
    for name, ms in [*groups.items(), ("ALL", mutants)]:
        done = [m for m in ms if m.outcome in ("killed", "timeout", "survived")]
        killed = sum(m.outcome in ("killed", "timeout") for m in done)
        timeouts = sum(m.outcome == "timeout" for m in done)
        total = sum(population.values()) if name == "ALL" else population.get(name, len(ms))
        lo, hi = wilson(killed, len(done))
        rate = killed / len(done) if done else float("nan")
        rows.append(f"{name:<36}{total:>5}  {len(ms):>7}  {killed:>6}  {timeouts:>7}  "
                    f"{len(done) - killed:>8}  {rate:6.1%}   [{lo:.1%}, {hi:.1%}]")
    surv = [m for m in mutants if m.outcome == "survived"]
    if surv:
        rows.append("\nsurvivors:")
        rows += [f"  {m.path}:{m.line}  {m.op}\n      - {m.original}\n      + {m.mutated}"
                 for m in surv]
    errors = [m for m in mutants if m.outcome in ("error", "stale")]
    if errors:
        rows.append("\nnot judged (error/stale):")
        rows += [f"  {m.path}:{m.line}  {m.op}  {m.outcome} {m.detail}" for m in errors]
    return "\n".join(rows)


# ----------------------------------------------------------------------------------------
def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    ap.add_argument("--modules", nargs="+", default=DEFAULT_MODULES,
                    help="files or folders, relative to the repository root")
    ap.add_argument("--sample", type=int, default=None, help="run a random sample of N mutants")
    ap.add_argument("--seed", type=int, default=0, help="seed of --sample")
    ap.add_argument("--jobs", type=int, default=1, help="parallel copies (default 1)")
    ap.add_argument("--timeout", type=float, default=None,
                    help="seconds per mutant (default 3x the baseline + 30)")
    ap.add_argument("--snapshot", choices=("worktree", "head"), default="worktree")
    ap.add_argument("--tests", nargs="+", default=None,
                    help="pytest arguments for every module instead of the mapping")
    ap.add_argument("--tiers", default="fast,full",
                    help="test sets to run in turn until one kills: 'fast,full' (default), "
                         "'fast' (one tier; survivors of the subset are survivors) or 'full'")
    ap.add_argument("--rerun", default=None, help="JSON of an earlier run: its survivors only")
    ap.add_argument("--exclude", nargs="+", default=(),
                    help="JSON files of earlier runs: draw only from mutants they did not run "
                         "(a second sample that, with the first, is one larger random sample)")
    ap.add_argument("--out", default="mutation.json", help="where to write the JSON results")
    ap.add_argument("--list", action="store_true", help="count the mutants and stop")
    ap.add_argument("--show", action="store_true", help="with --list: print every mutant")
    ap.add_argument("--self-check", action="store_true",
                    help="check that the copy is imported and a planted bug is caught")
    args = ap.parse_args(argv)

    paths = _module_files(args.modules)
    jobs = max(1, args.jobs)
    # SIGTERM: stop the pytest runs and remove the copies (results so far are in --out)
    signal.signal(signal.SIGTERM, _on_sigterm)
    spaces = [Workspace(args.snapshot, paths) for _ in range(jobs)]
    try:
        return _run(args, paths, spaces)
    finally:
        _kill_running()
        for ws in spaces:
            ws.close()


def _run(args: argparse.Namespace, paths: list[str], spaces: list[Workspace]) -> int:
    ws0 = spaces[0]
    mutants: list[Mutant] = []
    for rel in paths:
        mutants.extend(_Collector(rel, ws0.source(rel)).collect())
    population: dict[str, int] = {}
    for m in mutants:
        population[m.path] = population.get(m.path, 0) + 1
    if args.list:
        for rel in paths:
            print(f"{rel:<36}{population.get(rel, 0):>5}")
        print(f"{'ALL':<36}{len(mutants):>5}")
        if args.show:
            for m in mutants:
                print(f"{m.path}:{m.line}  {m.op:<24} {m.mutated}")
        return 0

    def tests_of(rel: str, tier: str) -> list[str]:
        if args.tests:
            return args.tests
        p = plan_for(rel)
        return p.fast if tier == "fast" else (p.full or p.fast)

    for ws in spaces:
        check_imports(ws.base)
    print(f"copies: {', '.join(ws.base for ws in spaces)} (imported from the copy: checked)")

    if args.rerun:
        with open(args.rerun) as fh:
            wanted = [m for m in json.load(fh)["mutants"] if m["outcome"] == "survived"]
        by_key = {m.key: m for m in mutants}
        # where the file changed since, the same mutation of the same source text
        by_text = {(m.path, m.op, m.original, m.mutated): m for m in mutants}
        chosen, stale = [], []
        for w in wanted:
            m = by_key.get(w["key"]) or by_text.get(
                (w["path"], w["op"], w["original"], w["mutated"]))
            (chosen if m is not None else stale).append(m or w["key"])
        for k in stale:
            print(f"stale (source changed, not found): {k}")
        order = {p: i for i, p in enumerate(paths)}
        unique = list({id(m): m for m in chosen}.values())
        mutants = sorted(unique, key=lambda m: (order[m.path], m.start))
    else:
        done_keys: set[str] = set()
        for name in args.exclude:
            with open(name) as fh:
                done_keys |= {m["key"] for m in json.load(fh)["mutants"]
                              if m["outcome"] != "pending"}
        mutants = [m for m in mutants if m.key not in done_keys]
    if not args.rerun and args.sample is not None and args.sample < len(mutants):
        chosen = random.Random(args.seed).sample(range(len(mutants)), args.sample)
        mutants = [mutants[i] for i in sorted(chosen)]
    print(f"{len(mutants)} mutants to run (population {sum(population.values())})")

    # baselines: the unmutated copy must pass every test set used (and warms numba's cache);
    # each distinct test set once, the full tier only when a mutant first needs it
    timeouts: dict[tuple[str, ...], float] = {}
    base_lock = threading.Lock()

    def timeout_for(tests: list[str], ws: Workspace = ws0) -> float:
        key = tuple(tests)
        with base_lock:
            if key not in timeouts:
                outcome, secs, tail = run_tests(tests, ws.base, 1800)
                print(f"baseline {' '.join(tests)}: {outcome} in {secs:.0f}s  ({tail})",
                      flush=True)
                if outcome != "survived":
                    raise SystemExit(f"the unmutated copy fails {tests}: {tail}")
                timeouts[key] = args.timeout or 3 * secs + 30
            return timeouts[key]

    if args.self_check:
        _self_check(ws0, tests_of)

    def save() -> None:  # after every mutant: an interrupted run keeps what it did
        with open(args.out, "w") as fh:
            json.dump({"command": " ".join(sys.argv[1:]), "population": population,
                       "sampled": args.sample, "seed": args.seed,
                       "mutants": [{**asdict(m), "key": m.key} for m in mutants]}, fh,
                      indent=1)

    lock = threading.Lock()
    free = list(spaces)
    t_start = time.monotonic()
    done = 0

    def judge(m: Mutant) -> Mutant:
        nonlocal done
        if _STOP.is_set():
            return m
        with lock:
            ws = free.pop()
        try:
            ws.apply(m)
            tiers = [t for t in args.tiers.split(",") if t in ("fast", "full")]
            for tier in tiers:
                tests = tests_of(m.path, tier)
                if tuple(tests) not in timeouts:
                    ws.restore(m.path)  # its baseline runs on this copy, unmutated
                    limit = timeout_for(tests, ws)
                    ws.apply(m)
                else:
                    limit = timeout_for(tests, ws)
                outcome, secs, tail = run_tests(tests, ws.base, limit)
                m.outcome, m.tier, m.detail = outcome, tier, tail
                m.seconds += secs
                if outcome != "survived":
                    break
        finally:
            ws.restore(m.path)
            with lock:
                free.append(ws)
                done += 1
                print(f"[{done}/{len(mutants)} {time.monotonic() - t_start:.0f}s] "
                      f"{m.outcome:<8} {m.tier:<4} {m.seconds:5.1f}s {m.path}:{m.line} "
                      f"{m.op}: {m.mutated}", flush=True)
                save()
        return m

    with ThreadPoolExecutor(max_workers=len(spaces)) as pool:
        results = list(pool.map(judge, mutants))

    save()
    print(summary(results, population))
    print(f"results: {args.out}")
    return 0


def _self_check(ws: Workspace, tests_of) -> None:
    """Plant an obvious bug (the PCR solver returns None) and require the tests to fail."""
    rel = "pcrsolve/linear/pcr.py"
    col = _Collector(rel, ws.source(rel) if rel in ws.original else open(
        os.path.join(ws.base, rel), "rb").read())
    planted = [m for m in col.collect() if m.op == "return-None" and "return b" in m.original]
    if not planted:
        raise SystemExit("self-check: no mutant to plant")
    m = planted[-1]
    if rel not in ws.original:
        with open(os.path.join(ws.base, rel), "rb") as fh:
            ws.original[rel] = fh.read()
        ws.stamp[rel] = os.stat(os.path.join(ws.base, rel)).st_mtime_ns
    ws.apply(m)
    try:
        outcome, secs, tail = run_tests(tests_of(rel, "fast"), ws.base, 900)
    finally:
        ws.restore(rel)
    print(f"self-check: planted {m.op} at {rel}:{m.line}: {outcome} in {secs:.0f}s ({tail})")
    if outcome != "killed":
        raise SystemExit("self-check failed: the planted bug was not caught")


if __name__ == "__main__":
    sys.exit(main())
