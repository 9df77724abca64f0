"""The package's shape: no import cycle among gift_mlx's modules, and every module opens with a docstring."""

import ast
from pathlib import Path

import gift_mlx

PACKAGE = Path(gift_mlx.__file__).parent
MODULES = {p.stem: p for p in PACKAGE.glob("*.py")}


def package_imports(path):
    """Names of gift_mlx modules that `path` imports, at any depth of its code (lazy imports count too)."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom):
            if node.level == 1 and node.module:  # from .x import y
                found.add(node.module.split(".")[0])
            elif node.level == 1:  # from . import x, y
                found |= {a.name for a in node.names}
            elif node.module and node.module.split(".")[0] == "gift_mlx":
                parts = node.module.split(".")
                found |= {parts[1]} if len(parts) > 1 else {a.name for a in node.names}
        elif isinstance(node, ast.Import):
            found |= {a.name.split(".")[1] for a in node.names if a.name.startswith("gift_mlx.")}
    return found & set(MODULES) - {path.stem, "__init__"}


def test_no_import_cycle():
    graph = {name: package_imports(path) for name, path in MODULES.items()}
    assert graph["merge"] >= {"adapters", "export", "outputs"}  # the parser does see imports
    state = {}  # name -> "open" while on the stack, "done" after

    def visit(name, stack):
        state[name] = "open"
        for dep in sorted(graph[name]):
            assert state.get(dep) != "open", "import cycle: " + " -> ".join([*stack, name, dep])
            if dep not in state:
                visit(dep, [*stack, name])
        state[name] = "done"

    for name in sorted(graph):
        if name not in state:
            visit(name, [])


def test_every_module_opens_with_a_docstring():
    missing = [name for name, path in MODULES.items()
               if not (ast.get_docstring(ast.parse(path.read_text())) or "").strip()]
    assert not missing, f"modules without an opening docstring: {missing}"
