"""The package boundaries, read from the source (AST), not from what a run happens to import:
each package imports only the project packages below it (lazy imports inside functions included),
so edge_sdfa imports nothing from host_tools, firmware_bridge or sim_backend, and the device
distribution (edge_sdfa, firmware_bridge) needs nothing from the host one; and no package has an
import cycle among its own modules (docs/architecture.md)."""
from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PACKAGES = ("edge_sdfa", "firmware_bridge", "sim_backend", "host_tools")
MAY_IMPORT = {                          # project packages each package may import (DESIGN.md)
    "edge_sdfa": (),
    "firmware_bridge": ("edge_sdfa",),
    "sim_backend": ("edge_sdfa",),
    "host_tools": ("edge_sdfa", "firmware_bridge", "sim_backend"),
}


def module_names(package_dir: Path) -> dict[str, Path]:
    """``dotted.name -> file`` for every module of a package directory (``__init__`` = the package)."""
    base = package_dir.parent
    out = {}
    for path in sorted(package_dir.rglob("*.py")):
        parts = list(path.relative_to(base).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts.pop()
        out[".".join(parts)] = path
    return out


def imports_of(name: str, path: Path, is_package: bool) -> list[tuple[str, int]]:
    """Every module ``name`` imports anywhere in its file, as (dotted name, line); ``from a import
    b`` yields ``a.b`` (the caller resolves it to ``a`` when ``b`` is not a module)."""
    tree = ast.parse(path.read_text(), str(path))
    here = name if is_package else name.rpartition(".")[0]
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found += [(alias.name, node.lineno) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = here.split(".")[: len(here.split(".")) - (node.level - 1)]
                base = ".".join(anchor + ([base] if base else []))
            found += [(f"{base}.{alias.name}" if alias.name != "*" else base, node.lineno) for alias in node.names]
    return found


def import_graph(package_dir: Path, forbidden_packages=("host_tools", "firmware_bridge", "sim_backend")
                 ) -> tuple[dict[str, set[str]], list[str]]:
    """(edges between the package's own modules, imports of forbidden packages as 'file:line name')."""
    modules = module_names(package_dir)
    edges: dict[str, set[str]] = {m: set() for m in modules}
    forbidden = []
    for name, path in modules.items():
        for target, line in imports_of(name, path, path.name == "__init__.py"):
            if target.split(".")[0] in forbidden_packages:
                forbidden.append(f"{path.relative_to(package_dir.parent)}:{line} {target}")
            while target and target not in modules and "." in target:
                target = target.rpartition(".")[0]      # from a.b import function -> a.b
            if target in modules and target != name:
                edges[name].add(target)
    return edges, forbidden


def find_cycle(edges: dict[str, set[str]]) -> list[str] | None:
    """One import cycle as [a, b, ..., a], or None."""
    state: dict[str, int] = {}          # 1 on the stack, 2 done
    stack: list[str] = []

    def visit(m: str) -> list[str] | None:
        state[m] = 1
        stack.append(m)
        for n in sorted(edges.get(m, ())):
            if state.get(n) == 1:
                return stack[stack.index(n):] + [n]
            if n not in state:
                cycle = visit(n)
                if cycle:
                    return cycle
        stack.pop()
        state[m] = 2
        return None

    for m in sorted(edges):
        if m not in state:
            cycle = visit(m)
            if cycle:
                return cycle
    return None


def test_edge_sdfa_imports_no_host_bridge_or_simulator_code():
    _, forbidden = import_graph(ROOT / "edge_sdfa")
    assert forbidden == [], "edge_sdfa must stand alone:\n" + "\n".join(forbidden)


def test_edge_sdfa_has_no_import_cycle():
    edges, _ = import_graph(ROOT / "edge_sdfa")
    assert len(edges) > 20 and sum(map(len, edges.values())) > 40    # the walk really saw the package
    assert find_cycle(edges) is None, " -> ".join(find_cycle(edges))


@pytest.mark.parametrize("package", ["firmware_bridge", "sim_backend", "host_tools"])
def test_every_package_imports_only_the_packages_below_it(package):
    above = tuple(p for p in PACKAGES if p != package and p not in MAY_IMPORT[package])
    edges, forbidden = import_graph(ROOT / package, above)
    assert forbidden == [], f"{package} may import only {MAY_IMPORT[package]}:\n" + "\n".join(forbidden)
    assert find_cycle(edges) is None, " -> ".join(find_cycle(edges))


@pytest.mark.parametrize("bad", ["lazy", "relative", "cycle"])
def test_the_checks_catch_what_they_are_for(tmp_path, bad):
    """The walker itself: a lazy host import, a relative import and a cycle are all found."""
    pkg = tmp_path / "edge_sdfa"
    (pkg / "int8").mkdir(parents=True)
    (pkg / "__init__.py").write_text("")
    (pkg / "int8" / "__init__.py").write_text("")
    (pkg / "int8" / "net.py").write_text("from edge_sdfa.int8 import arith\n")
    (pkg / "int8" / "arith.py").write_text("import numpy as np\n")
    (pkg / "finetune.py").write_text("from edge_sdfa.int8.net import forward\n")
    edges, forbidden = import_graph(pkg)
    assert edges["edge_sdfa.finetune"] == {"edge_sdfa.int8.net"} and edges["edge_sdfa.int8.net"] == {"edge_sdfa.int8.arith"}
    assert forbidden == [] and find_cycle(edges) is None
    if bad == "lazy":
        (pkg / "finetune.py").write_text("def f():\n    from host_tools.datasets import load_arrays\n")
        assert import_graph(pkg)[1] == ["edge_sdfa/finetune.py:2 host_tools.datasets.load_arrays"]
    elif bad == "relative":
        (pkg / "int8" / "arith.py").write_text("from ..finetune import f\n")
        cycle = find_cycle(import_graph(pkg)[0])
        assert cycle == ["edge_sdfa.finetune", "edge_sdfa.int8.net", "edge_sdfa.int8.arith", "edge_sdfa.finetune"]
    else:
        (pkg / "int8" / "arith.py").write_text("def g():\n    import edge_sdfa.int8.net\n")
        assert find_cycle(import_graph(pkg)[0]) == ["edge_sdfa.int8.net", "edge_sdfa.int8.arith", "edge_sdfa.int8.net"]


@pytest.mark.integration
def test_a_unit_test_that_starts_a_process_fails(pytester):
    """The tier guard in conftest.py: unmarked (= unit) tests may not start processes or open ptys."""
    pytester.makeconftest((ROOT / "tests" / "conftest.py").read_text())
    pytester.makepyfile(test_tiers="""
        import os, subprocess, sys
        import pytest

        def test_unit_runs_a_process():
            subprocess.run([sys.executable, "-c", "pass"])

        def test_unit_opens_a_pty():
            os.openpty()

        def test_unit_computes():
            assert sum(range(4)) == 6

        @pytest.mark.integration
        def test_integration_runs_a_process():
            subprocess.run([sys.executable, "-c", "pass"], check=True)
    """)
    result = pytester.runpytest_inprocess("-p", "no:cacheprovider")
    result.assert_outcomes(passed=2, failed=2)
    result.stdout.fnmatch_lines(["*test_unit_runs_a_process* is marked unit but starts a process*"])


def test_every_data_set_kind_names_a_reader():
    """A data set format is its reader module plus one entry in host_tools.datasets.spec.KINDS."""
    from host_tools.datasets import Dataset, reader_class
    from host_tools.datasets.spec import KINDS

    assert len(KINDS) >= 9
    for kind in KINDS:
        assert issubclass(reader_class(kind), Dataset), kind


def test_edge_sdfa_does_not_even_name_the_packages_above_it():
    """The issue's check: `grep -rn "host_tools\\|firmware_bridge\\|sim_backend" edge_sdfa/` finds nothing
    (not in code, docstrings or the embedded bundle's manifest)."""
    names = ("host_tools", "firmware_bridge", "sim_backend")
    hits = [f"{p.relative_to(ROOT)}: {name}" for p in (ROOT / "edge_sdfa").rglob("*")
            if p.is_file() and p.suffix in (".py", ".c", ".json", ".md", ".txt")
            for name in names if name in p.read_text(errors="replace")]
    assert hits == []
