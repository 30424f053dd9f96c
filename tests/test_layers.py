"""The layers of ARCHITECTURE.md, checked from the source: every module imports, no import cycles,
dependencies one way (core <- algorithms, core <- evaluators; only the CLI sees both)."""
from __future__ import annotations

import ast
import importlib
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("condense", "algorithms", "evaluators")
SHELL = "condense.cli"  # the application shell: the one core module allowed to import both


def project_modules() -> dict[str, Path]:
    out = {}
    for pkg in PACKAGES:
        for path in sorted((ROOT / pkg).rglob("*.py")):
            parts = path.relative_to(ROOT).with_suffix("").parts
            out[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    return out


def imports_of(path: Path, name: str) -> set[str]:
    """Project modules `path` imports anywhere (functions included), except under TYPE_CHECKING."""
    tree = ast.parse(path.read_text())
    skip = {id(n) for node in ast.walk(tree) if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test)
            for n in ast.walk(node)}
    found = set()
    for node in ast.walk(tree):
        if id(node) in skip:
            continue
        if isinstance(node, ast.Import):
            found |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:  # relative import
                base = ".".join(name.split(".")[: -node.level] + ([base] if base else []))
            found.add(base)
            found |= {f"{base}.{a.name}" for a in node.names}
    return {m for m in found if m.split(".")[0] in PACKAGES}


def graph() -> dict[str, set[str]]:
    mods = project_modules()
    return {m: {d for d in imports_of(p, m) if d in mods and d != m} for m, p in mods.items()}


@pytest.mark.parametrize("module", sorted(project_modules()))
def test_every_module_imports(module):
    importlib.import_module(module)


def test_dependencies_run_one_way():
    bad = []
    for mod, deps in graph().items():
        layer = mod.split(".")[0]
        for d in deps:
            other = d.split(".")[0]
            if layer == "condense" and other != "condense" and mod != SHELL:
                bad.append(f"core module {mod} imports {d}")
            if {layer, other} == {"algorithms", "evaluators"}:
                bad.append(f"{mod} imports {d}: algorithms and evaluators never import each other")
    assert not bad, "\n".join(bad)


def find_cycle(g: dict[str, set[str]]) -> list[str] | None:
    """One import cycle of graph g (module -> modules it imports), or None."""
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(m: str) -> list[str] | None:
        state[m] = 1
        stack.append(m)
        for d in sorted(g.get(m, ())):
            if state.get(d) == 1:
                return stack[stack.index(d):] + [d]
            if d in g and not state.get(d):
                cycle = visit(d)
                if cycle:
                    return cycle
        stack.pop()
        state[m] = 2
        return None

    for m in sorted(g):
        if not state.get(m):
            cycle = visit(m)
            if cycle:
                return cycle
    return None


def test_no_import_cycles():
    cycle = find_cycle({m: d for m, d in graph().items() if m != SHELL})
    assert cycle is None, "import cycle: " + " -> ".join(cycle or [])


def test_the_checks_can_fail(tmp_path):
    """What the checks above would catch: imports inside functions count, and a cycle is found."""
    path = tmp_path / "x.py"
    path.write_text("from condense.data import RealData\nimport evaluators.report\n"
                    "def f():\n    from algorithms import dm\n")
    assert imports_of(path, "condense.x") >= {"condense.data", "evaluators.report", "algorithms.dm"}
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": set()}) is None


def test_importing_the_library_changes_no_process_state():
    """Only the console entry point tunes the process: importing every module (the CLI's included)
    leaves the signal handlers, the environment and the import system alone, and does not tune the
    allocator."""
    import subprocess
    import sys

    code = (
        "import os, signal, sys\n"
        "import condense.runtime\n"
        "calls = []\n"
        "condense.runtime.tune_process = lambda: calls.append('tune_process')\n"
        "before = (signal.getsignal(signal.SIGINT), dict(os.environ))\n"
        "import importlib\n"
        f"for m in {sorted(project_modules())!r}:\n"
        "    importlib.import_module(m)\n"
        "blocked = [k for k, v in sys.modules.items() if v is None]\n"
        "print((signal.getsignal(signal.SIGINT), dict(os.environ)) == before, calls, blocked)\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300, cwd=ROOT)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "True [] []"
