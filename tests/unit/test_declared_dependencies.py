"""Every third-party module rkpipe imports is a declared dependency of the rkpipe package (the
main list or an extra), not something another package happens to pull in."""

from __future__ import annotations

import ast
import importlib.metadata
import re
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
# imported in another interpreter or as a sibling script, never from rkpipe's environment
ELSEWHERE = {
    "rkllm": "rkllm-toolkit, in its own venv (rkllm_worker.py)",
    "rknn": "rknn-toolkit2, in .venv-rknn (rknn_worker.py)",
    "engine_shared": "the engines' shared module, copied beside them onto a board",
}


def _imported_modules() -> set[str]:
    modules = set()
    for folder in ("src/rkpipe", "stages"):
        for path in (ROOT / folder).rglob("*.py"):
            for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
                if isinstance(node, ast.Import):
                    modules |= {alias.name.split(".")[0] for alias in node.names}
                elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                    modules.add(node.module.split(".")[0])
    return {m for m in modules if m not in sys.stdlib_module_names and m != "rkpipe"}


def _declared() -> set[str]:
    names = set()
    for requirement in importlib.metadata.requires("rkpipe") or []:
        names.add(re.split(r"[\s<>=!~\[;]", requirement, maxsplit=1)[0].lower().replace("_", "-"))
    return names


def test_every_imported_package_is_declared():
    providers = importlib.metadata.packages_distributions()
    declared = _declared()
    undeclared = {}
    for module in sorted(_imported_modules() - set(ELSEWHERE)):
        dists = {d.lower().replace("_", "-") for d in providers.get(module, [module])}
        if not dists & declared:
            undeclared[module] = sorted(dists)
    assert undeclared == {}, f"imported but not declared in pyproject.toml: {undeclared}"
