"""The package's layers (docs/design.md): no import circle, and no import from a lower layer to a higher one."""

from __future__ import annotations

import ast
import importlib
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "cifar_resnet_cli"
# Lowest first: a module may import from its own layer and the layers before it.
LAYERS = ("core", "model", "data", "deploy", "measure", "training", "cli")


def _modules() -> dict[str, Path]:
    """``"core.settings"`` -> its file, for every module of the package (``""`` is the package itself)."""
    out = {}
    for path in PACKAGE.rglob("*.py"):
        parts = list(path.relative_to(PACKAGE).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts = parts[:-1]
        out[".".join(parts)] = path
    return out


def _imports(name: str, path: Path, modules: dict[str, Path]) -> set[str]:
    """The package's modules that ``name`` imports, at the top or inside functions, typing-only included."""
    package = name.split(".") if path.name == "__init__.py" else name.split(".")[:-1]
    package = [p for p in package if p]
    found = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.ImportFrom) and node.level:
            base = package[: len(package) - node.level + 1] + (node.module.split(".") if node.module else [])
            for alias in node.names:
                candidate = ".".join([*base, alias.name])
                found.add(candidate if candidate in modules else ".".join(base))
        elif isinstance(node, (ast.Import, ast.ImportFrom)):
            names = [a.name for a in node.names] if isinstance(node, ast.Import) else [node.module or ""]
            for full in names:
                if full.startswith("cifar_resnet_cli"):
                    found.add(full.removeprefix("cifar_resnet_cli").lstrip("."))
    return {m for m in found if m in modules and m != name}


def _graph() -> dict[str, set[str]]:
    modules = _modules()
    return {name: _imports(name, path, modules) for name, path in modules.items()}


def _layer(module: str) -> int | None:
    top = module.split(".")[0]
    return LAYERS.index(top) if top in LAYERS else None


def test_every_module_lives_in_a_layer():
    loose = [m for m in _graph() if _layer(m) is None and m not in ("", "__main__")]
    assert not loose, f"modules outside the layer folders {LAYERS}: {loose}"


def test_no_import_goes_up_a_layer():
    up = [
        f"{m} ({LAYERS[_layer(m)]}) imports {t} ({LAYERS[_layer(t)]})"
        for m, targets in _graph().items()
        for t in targets
        if _layer(m) is not None and _layer(t) is not None and _layer(t) > _layer(m)
    ]
    assert not up, "imports from a lower layer to a higher one:\n" + "\n".join(sorted(up))


def test_no_import_circle():
    graph = {m: {t for t in ts if t} for m, ts in _graph().items() if m}
    state: dict[str, int] = {}  # 1: on the current path, 2: done
    circles = []

    def visit(node: str, path: list[str]) -> None:
        state[node] = 1
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == 1:
                circles.append(" -> ".join([*path[path.index(nxt) :], nxt]))
            elif nxt not in state:
                visit(nxt, [*path, nxt])
        state[node] = 2

    for module in sorted(graph):
        if module not in state:
            visit(module, [module])
    assert not circles, "import circles:\n" + "\n".join(circles)


def test_the_check_sees_imports_inside_functions_and_relative_ones():
    graph = _graph()
    assert "training.train" in graph["cli.commands.train"]  # imported inside the train command
    assert "core.errors" in graph["core.settings"]
    assert "core.settings" in graph["training.train"]


def test_no_function_is_longer_than_a_screen():
    long = []
    for path in PACKAGE.rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)) and node.end_lineno - node.lineno >= 80:
                long.append(
                    f"{path.relative_to(PACKAGE)}:{node.lineno} {node.name} ({node.end_lineno - node.lineno + 1})"
                )
    assert not long, "functions over 80 lines: " + ", ".join(long)


def test_every_registry_line_names_a_module_that_provides_it():
    from cifar_resnet_cli.core.formats import EXPORT_FORMATS
    from cifar_resnet_cli.core.kinds import DATASET_KINDS

    for name, kind in DATASET_KINDS.items():
        assert callable(getattr(importlib.import_module(kind.loader), "load", None)), name
    for name, fmt in EXPORT_FORMATS.items():
        module = fmt.module()
        assert callable(getattr(module, "write", None)) and callable(getattr(module, "unavailable", None)), name
