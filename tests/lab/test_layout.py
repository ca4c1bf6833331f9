"""Where the lab sits: beside the package, never inside it nor imported by it;
no import circle among its modules; unit tests import only its pure modules
(those that import no other module of the lab)."""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
PURE = {"tglab", "tglab.bench_report", "tglab.engines", "tglab.topology"}


def module_of(path: Path) -> str:
    parts = path.relative_to(ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imports_of(path: Path) -> set[str]:
    """Every module `path` imports, at the top or inside a function, as absolute names."""
    package = module_of(path) if path.stem == "__init__" else module_of(path).rpartition(".")[0]
    out = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            out |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom):
            mod = node.module or ""
            if node.level:
                base = package.rsplit(".", node.level - 1)[0] if node.level > 1 else package
                mod = base + ("." + mod if mod else "")
            out.add(mod)
            out |= {f"{mod}.{a.name}" for a in node.names}     # `from pkg import module`
    return out


def graph(pkg_dir: Path) -> dict[str, set[str]]:
    """module -> the modules of the same package it imports."""
    mods = {module_of(p): p for p in pkg_dir.glob("*.py")}
    return {m: {i for i in imports_of(p) if i in mods and i != m} for m, p in mods.items()}


def cycles(g: dict[str, set[str]]) -> list[list[str]]:
    found, state = [], {}

    def visit(m, path):
        state[m] = "open"
        for n in sorted(g[m]):
            if state.get(n) == "open":
                found.append(path[path.index(n):] + [n])
            elif n not in state:
                visit(n, path + [n])
        state[m] = "done"

    for m in sorted(g):
        if m not in state:
            visit(m, [m])
    return found


def test_the_lab_is_not_in_the_installed_package():
    assert not (ROOT / "tunnelgate" / "lab").exists()
    for p in (ROOT / "tunnelgate").rglob("*.py"):
        assert not {i for i in imports_of(p) if i.split(".")[0] == "tglab"}, p


def test_no_import_circle_in_the_lab():
    assert cycles(graph(ROOT / "tglab")) == []


def test_the_circle_check_sees_one():
    g = {"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}
    assert cycles(g) == [["a", "b", "c", "a"]]


def test_unit_tests_import_only_pure_lab_modules():
    g = graph(ROOT / "tglab")
    for m in PURE:
        assert g[m] == set(), f"{m} imports {g[m]}: no longer pure"
    for p in (ROOT / "tests" / "unit").glob("*.py"):
        used = {i for i in imports_of(p) if i.split(".")[0] == "tglab" and i in g}
        assert used <= PURE, f"{p.name} imports {used - PURE}"
