"""The package's layering: imports run down the data path, never up, never in a cycle.

Rooms, bottom to top (README, "Architecture"): the foundation modules, then data, encoders,
features, models, results, evaluation, train, the demo orchestrator, and the CLI. A module may
import its own room and any room below it; the library never imports the CLI, Typer or Rich.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PKG = Path(__file__).resolve().parents[1] / "fsar_cli"

# Lower index = lower room. Modules not listed under a room are the foundation (level 0).
LEVELS = {
    "data": 1,
    "encoders": 2,
    "features": 3,
    "models": 4,
    "results": 5,
    "evaluation": 6,
    "train": 7,
    "prediction": 7,
    "demo": 8,
    "cli": 9,
}
FOUNDATION = {
    "errors",
    "atomic",
    "progress",
    "recipe",
    "episodes",
    "episode_rng",
    "distributed",
    "ownership",
    "locks",
    "threads",
}


def _room(module: str) -> str:
    """``fsar_cli.data.splits`` -> ``data``; ``fsar_cli.recipe`` -> ``recipe``."""
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else ""


def _level(module: str) -> int:
    room = _room(module)
    return LEVELS.get(room, 0)


def _modules() -> dict[str, Path]:
    out = {}
    for path in sorted(PKG.rglob("*.py")):
        rel = path.relative_to(PKG.parent).with_suffix("")
        parts = list(rel.parts)
        if parts[-1] == "__init__":
            parts = parts[:-1]
        out[".".join(parts)] = path
    return out


def _imports(module: str, path: Path) -> list[tuple[str, int, bool]]:
    """(imported module, line, at module level) of every import of ``module``."""
    tree = ast.parse(path.read_text())
    package = module if path.name == "__init__.py" else module.rsplit(".", 1)[0]
    top_level = {id(node) for node in tree.body}
    out = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            out += [(a.name, node.lineno, id(node) in top_level) for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[: len(base) - node.level + 1]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            out.append((target, node.lineno, id(node) in top_level))
            if target.startswith("fsar_cli"):  # `from . import x` imports module x
                out += [
                    (f"{target}.{a.name}", node.lineno, id(node) in top_level)
                    for a in node.names
                    if f"{target}.{a.name}" in MODULES
                ]
    return out


MODULES = _modules()


def test_rooms_are_known() -> None:
    rooms = {_room(m) for m in MODULES if m.count(".") >= 1}
    top = {m.split(".")[1] for m in MODULES if m.count(".") == 1}
    unknown = rooms - set(LEVELS) - FOUNDATION - {"__main__"}
    assert not unknown, f"modules outside every room: {sorted(unknown)}; add them to LEVELS"
    assert top  # the walk found the package


@pytest.mark.parametrize("module", sorted(MODULES))
def test_no_import_runs_upward(module: str) -> None:
    if module in ("fsar_cli", "fsar_cli.__main__"):
        return  # the package's lazy verbs and the entry point sit above every room
    mine = _level(module)
    for target, line, _ in _imports(module, MODULES[module]):
        if not target.startswith("fsar_cli.") or target == "fsar_cli":
            continue
        assert _level(target) <= mine, (
            f"{MODULES[module].relative_to(PKG.parent)}:{line} imports {target} "
            f"(room {_room(target)!r}) from room {_room(module)!r}, which lies below it"
        )


@pytest.mark.parametrize(
    "module", sorted(m for m in MODULES if _room(m) != "cli" and m != "fsar_cli.__main__")
)
def test_library_never_imports_the_cli(module: str) -> None:
    for target, line, _ in _imports(module, MODULES[module]):
        assert target.split(".")[0] not in ("typer", "rich"), f"{module}:{line} imports {target}"
        assert not target.startswith("fsar_cli.cli"), f"{module}:{line} imports {target}"


def test_no_import_cycles_at_module_level() -> None:
    graph = {
        m: {
            t
            for t, _, top in _imports(m, p)
            if top and t in MODULES and t != m and not m.startswith(t + ".")
        }
        for m, p in MODULES.items()
    }
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(m: str) -> None:
        state[m] = 1
        stack.append(m)
        for t in sorted(graph[m]):
            if state.get(t) == 1:
                cycle = stack[stack.index(t) :] + [t]
                raise AssertionError("import cycle: " + " -> ".join(cycle))
            if t not in state:
                visit(t)
        stack.pop()
        state[m] = 2

    for m in sorted(graph):
        if m not in state:
            visit(m)


def test_only_encoders_clip_imports_clip() -> None:
    users = sorted(
        m
        for m, p in MODULES.items()
        for t, _, _ in _imports(m, p)
        if t == "clip" or t.startswith("clip.")
    )
    assert set(users) <= {"fsar_cli.encoders.clip", "fsar_cli.encoders.offline"}, users


def test_the_offline_encoder_loads_without_the_clip_package() -> None:
    # a demo rerun loads the offline encoder; `clip` pulls in torchvision (4.5 s at start-up)
    import subprocess
    import sys

    code = (
        "import sys, fsar_cli.encoders.offline\n"
        "print(sorted(m for m in ('clip', 'torchvision') if m in sys.modules))"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], cwd=PKG.parent, capture_output=True, text=True, check=True
    )
    assert out.stdout.strip() == "[]", out.stdout


def test_no_reexport_facades() -> None:
    """A module whose body is only imports (besides its docstring and __all__) is a facade."""
    for m, path in MODULES.items():
        if m == "fsar_cli.models":  # the documented public API of the heads (README)
            continue
        tree = ast.parse(path.read_text())
        body = [
            n
            for n in tree.body
            if not (isinstance(n, ast.Expr) and isinstance(n.value, ast.Constant))
            and not (
                isinstance(n, ast.Assign)
                and any(isinstance(t, ast.Name) and t.id == "__all__" for t in n.targets)
            )
        ]
        imports = [n for n in body if isinstance(n, ast.Import | ast.ImportFrom)]
        local = [n for n in imports if isinstance(n, ast.ImportFrom) and n.level]
        assert not (body and len(imports) == len(body) and local), f"{m} only re-exports names"
