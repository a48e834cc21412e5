"""No import cycles among rkpipe's modules, counting imports inside functions (they hide
cycles that only bite at run time, and make the layering impossible to read)."""

from __future__ import annotations

import ast
from pathlib import Path

SRC = Path(__file__).resolve().parents[2] / "src"


def module_names(root: Path) -> dict[str, Path]:
    mods = {}
    for path in root.rglob("*.py"):
        parts = list(path.relative_to(root).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts = parts[:-1]
        mods[".".join(parts)] = path
    return mods


def imported(node: ast.AST, package: str) -> list[str]:
    if isinstance(node, ast.Import):
        return [alias.name for alias in node.names]
    if isinstance(node, ast.ImportFrom):
        base = node.module or ""
        if node.level:
            up = package.split(".")[: len(package.split(".")) - node.level + 1]
            base = ".".join([*up, base] if base else up)
        return [base] + [f"{base}.{alias.name}" for alias in node.names]
    return []


def runtime_nodes(tree: ast.AST) -> list[ast.AST]:
    """Every node that runs, i.e. all but the bodies of ``if TYPE_CHECKING:`` blocks."""
    skipped = {
        id(child)
        for node in ast.walk(tree)
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test)
        for stmt in node.body
        for child in ast.walk(stmt)
    }
    return [node for node in ast.walk(tree) if id(node) not in skipped]


def _packages_of(module: str) -> list[str]:
    parts = module.split(".")
    return [".".join(parts[:i]) for i in range(1, len(parts))]


def import_graph(root: Path) -> dict[str, set[str]]:
    """Module -> the rkpipe modules it imports anywhere in its body (functions included)."""
    mods = module_names(root)

    def resolve(name: str) -> str | None:
        while name and name not in mods:
            name = name.rpartition(".")[0]
        return name or None

    graph: dict[str, set[str]] = {m: set() for m in mods if m.startswith("rkpipe")}
    for mod in graph:
        path = mods[mod]
        package = mod if path.name == "__init__.py" else mod.rpartition(".")[0]
        for node in runtime_nodes(ast.parse(path.read_text(encoding="utf-8"))):
            for name in imported(node, package):
                target = resolve(name)
                # a package's own __init__ is not a cycle with its submodules' "from . import"
                # importing a.b.c also runs a/__init__ and a/b/__init__: those edges are real
                for dest in [target, *_packages_of(target)] if target else []:
                    if dest != mod and dest in graph and not mod.startswith(dest + "."):
                        graph[mod].add(dest)
    return graph


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    found: list[list[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        for nxt in sorted(graph[node]):
            if nxt not in index:
                visit(nxt)
                low[node] = min(low[node], low[nxt])
            elif nxt in stack:
                low[node] = min(low[node], index[nxt])
        if low[node] == index[node]:
            component = []
            while True:
                top = stack.pop()
                component.append(top)
                if top == node:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return found


def test_the_detector_sees_a_cycle_hidden_in_a_function(tmp_path):
    pkg = tmp_path / "rkpipe"
    pkg.mkdir()
    (pkg / "__init__.py").write_text("")
    (pkg / "a.py").write_text("from rkpipe.b import f\n")
    (pkg / "b.py").write_text("def f():\n    from rkpipe import a\n")
    (pkg / "c.py").write_text("import rkpipe.a\n")
    assert cycles(import_graph(tmp_path)) == [["rkpipe.a", "rkpipe.b"]]


def test_the_detector_sees_a_cycle_through_a_package_init(tmp_path):
    pkg = tmp_path / "rkpipe"
    (pkg / "config").mkdir(parents=True)
    (pkg / "asr").mkdir()
    (pkg / "__init__.py").write_text("")
    (pkg / "asr" / "__init__.py").write_text("")
    (pkg / "config" / "__init__.py").write_text("from rkpipe.config.validate import check\n")
    (pkg / "config" / "schema.py").write_text("")
    (pkg / "config" / "validate.py").write_text("from rkpipe.asr.model import SOURCES\n")
    (pkg / "asr" / "model.py").write_text("from rkpipe.config.schema import AsrConfig\n")
    found = cycles(import_graph(tmp_path))
    assert found and "rkpipe.asr.model" in found[0] and "rkpipe.config" in found[0]


def test_rkpipe_has_no_import_cycles():
    assert cycles(import_graph(SRC)) == []


# The allowed imports drawn in docs/architecture.md: part -> parts it must never import.
# ``foundation`` is the set of modules every part may use and that use only each other.
FOUNDATION = {
    "errors", "io", "registry", "workspace", "hub", "hostinfo", "toolchain", "quant_manifest",
    "layout", "secrets", "processes",
}  # fmt: skip
FORBIDDEN = {
    "engines": "everything",  # copied alone to a board: stdlib, numpy, onnxruntime only
    "board": {"backends", "tracking", "report", "sweep", "reproduce", "cli", "stage"},
    "backends": {"board", "tracking", "report", "sweep", "reproduce", "cli", "stage"},
    "measure": {"board", "backends", "tracking", "report"},
    "llm": {"board", "tracking", "report", "evaluate"},
    "asr": {"board", "tracking", "report", "backends"},
    "tracking": {"board", "backends", "report", "sweep", "cli", "stage"},
    "preflight": {"backends", "report", "sweep", "reproduce", "cli", "stage"},
    "workspace_claim": "everything",  # started alone as the claim's watcher process
}


def part(module: str) -> str:
    pieces = module.split(".")
    return pieces[1] if len(pieces) > 1 else "rkpipe"


def layering_violations(graph: dict[str, set[str]]) -> list[str]:
    found = []
    for module, targets in sorted(graph.items()):
        source = part(module)
        for target in sorted(targets):
            dest = part(target)
            if dest == source or dest == "rkpipe":
                continue
            forbidden = FORBIDDEN.get(source, set())
            if source in FOUNDATION and dest not in FOUNDATION:
                found.append(f"{module} -> {target} (foundation imports a part)")
            elif forbidden == "everything" or dest in forbidden:
                found.append(f"{module} -> {target}")
    return found


def test_the_parts_import_only_what_docs_architecture_allows():
    assert layering_violations(import_graph(SRC)) == []


def test_the_layering_check_sees_a_board_importing_a_backend(tmp_path):
    pkg = tmp_path / "rkpipe"
    (pkg / "board").mkdir(parents=True)
    (pkg / "backends").mkdir()
    for init in (pkg, pkg / "board", pkg / "backends"):
        (init / "__init__.py").write_text("")
    (pkg / "backends" / "x.py").write_text("")
    (pkg / "board" / "deploy.py").write_text("def f():\n    from rkpipe.backends import x\n")
    assert "rkpipe.board.deploy -> rkpipe.backends.x" in layering_violations(import_graph(tmp_path))


def test_only_tracking_imports_mlflow():
    importers = set()
    for path in (SRC / "rkpipe").rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            names = imported(node, "")
            if any(n == "mlflow" or n.startswith("mlflow.") for n in names):
                importers.add(path.relative_to(SRC / "rkpipe").parts[0])
    assert importers == {"tracking"}


def test_every_module_imports_first_in_a_fresh_process():
    """What the graph check approximates: each module imported before any other rkpipe
    module (a partial-initialisation cycle fails only when entered at the right module)."""
    import subprocess
    import sys

    code = (
        "import importlib, sys\n"
        "failed = []\n"
        "for name in sys.argv[1:]:\n"
        "    for loaded in [m for m in sys.modules if m == 'rkpipe' or m.startswith('rkpipe.')]:\n"
        "        del sys.modules[loaded]\n"
        "    try:\n"
        "        importlib.import_module(name)\n"
        "    except ImportError as exc:\n"
        "        failed.append(f'{name}: {exc}')\n"
        "print('\\n'.join(failed))\n"
    )
    modules = sorted(m for m in module_names(SRC) if m.startswith("rkpipe"))
    out = subprocess.run(
        [sys.executable, "-c", code, *modules], capture_output=True, text=True, check=True
    )
    assert out.stdout.strip() == ""
