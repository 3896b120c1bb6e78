"""The package's layering: no import circles, and each layer imports only the ones below it.

The graph is read from the source (every ``import`` statement, function-level ones included: a
lazy import is still a dependency, and a circle through one breaks as soon as someone hoists it).
"""

from __future__ import annotations

import ast
import importlib
import pkgutil
from pathlib import Path

import pytest

import tvm_sparse

PACKAGE = Path(tvm_sparse.__file__).parent

# Layers from the bottom up: a module may import its own layer and the ones listed before it.
LAYERS = [
    # peers: imports nothing of the package (DeepSparse's venv runs it as a script)
    (
        "formats",
        "errors",
        "safe_text",
        "timing",
        "target",
        "machine",
        "report",
        "report_html",
        "phases",
        "context",
        "run_guards",
        "huge_pages",
        "peers",
    ),
    ("ir",),
    ("schedules",),
    ("passes",),
    (
        "frontend",
        "torch_frontend",
        "module",
        "profile",
        "onnx_fold",
        "onnx_fixes",
        "onnx_recurrent",
        "onnx_nodes",
        "op",
        "sparsify",
        "models",
        "models_bert",
        "zoo",
    ),  # fmt: skip
    ("final_build", "compile_tvm", "codegen", "tuner"),
    (
        "compiler",
        "torch_backend",
        "tune_cli",
        "benchmark",
        "bench_worker",
        "cli",
        "demo",
        "__init__",
    ),
]


def _module_name(path: Path) -> str:
    rel = path.relative_to(PACKAGE.parent).with_suffix("")
    parts = list(rel.parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _modules() -> dict[str, Path]:
    return {_module_name(p): p for p in sorted(PACKAGE.rglob("*.py"))}


def _resolve(module: str, is_package: bool, node: ast.ImportFrom) -> str:
    if node.level == 0:
        return node.module or ""
    base = module.split(".") if is_package else module.split(".")[:-1]
    base = base[: len(base) - (node.level - 1)]
    return ".".join(base + ([node.module] if node.module else []))


def import_graph() -> dict[str, set[str]]:
    """module -> the tvm_sparse modules it imports."""
    modules = _modules()
    graph: dict[str, set[str]] = {}
    for name, path in modules.items():
        is_package = path.name == "__init__.py"
        targets: set[str] = set()
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                targets |= {alias.name for alias in node.names}
            elif isinstance(node, ast.ImportFrom):
                base = _resolve(name, is_package, node)
                for alias in node.names:
                    sub = f"{base}.{alias.name}"
                    targets.add(sub if sub in modules else base)
        graph[name] = {t for t in targets if t in modules and t != name}
    return graph


def _cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One import circle, or None."""
    state: dict[str, int] = {}  # 1: on the current path, 2: done
    path: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        path.append(node)
        for nxt in sorted(graph[node]):
            if state.get(nxt) == 1:
                return path[path.index(nxt) :] + [nxt]
            if nxt not in state and (found := visit(nxt)):
                return found
        path.pop()
        state[node] = 2
        return None

    for node in sorted(graph):
        if node not in state and (found := visit(node)):
            return found
    return None


def _layer(module: str) -> int:
    top = module.split(".")[1] if "." in module else "__init__"
    for i, names in enumerate(LAYERS):
        if top in names:
            return i
    raise AssertionError(f"{module}: not in any layer of LAYERS; add it")


def test_no_import_circle():
    cycle = _cycle(import_graph())
    assert cycle is None, "import circle: " + " -> ".join(cycle)


def test_cycle_finder_finds_a_circle():
    assert _cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert _cycle({"a": {"b"}, "b": set()}) is None


def test_layers_import_only_downwards():
    upward = [
        f"{src} -> {dst}"
        for src, dsts in import_graph().items()
        for dst in dsts
        if _layer(dst) > _layer(src) and dst != "tvm_sparse"
    ]
    assert not upward, "imports of a higher layer:\n" + "\n".join(sorted(upward))


def test_formats_are_plain_numpy():
    for path in (PACKAGE / "formats").glob("*.py"):
        tree = ast.parse(path.read_text())
        names = {a.name for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names}
        names |= {n.module or "" for n in ast.walk(tree) if isinstance(n, ast.ImportFrom)}
        assert not any(n.split(".")[0] == "tvm" for n in names), path.name


@pytest.mark.parametrize(
    "module", sorted(m.name for m in pkgutil.walk_packages(tvm_sparse.__path__, "tvm_sparse."))
)
def test_every_module_imports(module):
    importlib.import_module(module)


def test_peers_imports_nothing_of_the_package():
    # DeepSparse's venv (numpy<2, no tvm_sparse) runs tvm_sparse/peers.py by path as its server
    assert import_graph()["tvm_sparse.peers"] == set()
