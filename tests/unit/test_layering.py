"""The layering rules of DESIGN.md, checked on the source: TCP never imports MPTCP, and the
protocol core imports no I/O, clock, thread or higher layer, and draws randomness only from
generators it is given."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
STACK = ROOT / "testbed" / "stack"
TCP = STACK / "tcp"
FORBIDDEN_IN_STACK = ("testbed.runtime", "testbed.emu", "experiments", "analysis", "socket",
                      "time", "threading", "asyncio", "select", "selectors")


def imported_modules(tree: ast.AST) -> list[tuple[str, int]]:
    found: list[tuple[str, int]] = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found += [(alias.name, node.lineno) for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            found.append((node.module, node.lineno))
            found += [(f"{node.module}.{alias.name}", node.lineno) for alias in node.names]
    return found


def sources(root: Path) -> list[Path]:
    return sorted(root.rglob("*.py"))


def parse(path: Path) -> ast.Module:
    return ast.parse(path.read_text(encoding="utf-8"), str(path))


def test_the_trees_exist() -> None:
    assert sources(TCP), "testbed/stack/tcp has no Python files"


@pytest.mark.parametrize("path", sources(TCP), ids=lambda p: p.name)
def test_tcp_never_imports_mptcp(path: Path) -> None:
    for name, line in imported_modules(parse(path)):
        assert "mptcp" not in name.lower(), f"{path.name}:{line} imports {name}"


def _is_under(name: str, prefix: str) -> bool:
    return name == prefix or name.startswith(prefix + ".")


@pytest.mark.parametrize("path", sources(STACK), ids=lambda p: str(p.relative_to(STACK)))
def test_stack_imports_no_io_clock_thread_or_higher_layer(path: Path) -> None:
    for name, line in imported_modules(parse(path)):
        for bad in FORBIDDEN_IN_STACK:
            assert not _is_under(name, bad), f"{path.relative_to(ROOT)}:{line} imports {name}"


def _annotation_only_random(tree: ast.Module) -> list[str]:
    """Uses of the `random` module other than naming its types (random.Random)."""
    problems: list[str] = []
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.module == "random":
            names = [a.name for a in node.names]
            if names != ["Random"] and any(n != "Random" for n in names):
                problems.append(f"line {node.lineno}: from random import {names}")
        if (isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name)
                and node.value.id == "random" and node.attr != "Random"):
            problems.append(f"line {node.lineno}: random.{node.attr}")
        if (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute)
                and isinstance(node.func.value, ast.Name) and node.func.value.id == "random"):
            problems.append(f"line {node.lineno}: calls random.{node.func.attr}()")
    return problems


@pytest.mark.parametrize("path", sources(STACK), ids=lambda p: str(p.relative_to(STACK)))
def test_stack_uses_random_only_as_a_type(path: Path) -> None:
    """Randomness comes from a seeded random.Random passed in: the module itself may only
    be named in annotations (calling random.Random() would make an unseeded generator)."""
    assert _annotation_only_random(parse(path)) == []


def test_the_checks_catch_offenders() -> None:
    bad = ast.parse("import random\nimport time\nfrom testbed.stack.mptcp import x\n"
                    "v = random.random()\nr = random.Random()\n")
    names = [n for n, _ in imported_modules(bad)]
    assert "time" in names and any("mptcp" in n for n in names)
    problems = _annotation_only_random(bad)
    assert any("random.random" in p for p in problems)
    assert any("calls random.Random()" in p for p in problems)
