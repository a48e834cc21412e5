"""The engines run on a board where rkpipe is not installed: each imports only the standard
library, numpy, onnxruntime and ``engine_shared.py``, which deploy pushes beside it, and
``engine_shared`` imports nothing but the standard library at the top (the rkllm runner runs on
a bare Python)."""

from __future__ import annotations

import ast
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

import rkpipe.engines

ENGINES = Path(rkpipe.engines.__file__).resolve().parent
RUNNERS = ["ort_llm", "ort_whisper", "ort_ctc", "rkllm_runner"]
ALLOWED = {"ort_llm": {"numpy", "onnxruntime"}, "ort_whisper": {"numpy", "onnxruntime"},
           "ort_ctc": {"numpy"}, "rkllm_runner": {"numpy"}}  # fmt: skip
# The rkllm benchmark runs on a board's bare Python: numpy only inside the logits mode (device
# accuracy, rkpipe.evaluate.device), never at import.
BARE_AT_IMPORT = ("rkllm_runner", "engine_shared")


def imported_modules(path: Path, top_level_only: bool = False) -> set[str]:
    tree = ast.parse(path.read_text(encoding="utf-8"))
    nodes = tree.body if top_level_only else list(ast.walk(tree))
    found = set()
    for node in nodes:
        if isinstance(node, ast.Import):
            found |= {alias.name.split(".")[0] for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module:
            found.add(node.module.split(".")[0])
    return found - set(sys.stdlib_module_names)


@pytest.mark.parametrize("engine", RUNNERS)
def test_an_engine_imports_only_what_a_board_has(engine):
    # rkpipe / engine_shared: the one shared file, from the package or as the sibling on a board
    assert imported_modules(ENGINES / f"{engine}.py") == ALLOWED[engine] | {
        "rkpipe",
        "engine_shared",
    }


@pytest.mark.parametrize("module", BARE_AT_IMPORT)
def test_a_bare_python_module_needs_only_the_standard_library_at_import(module):
    assert (
        imported_modules(ENGINES / f"{module}.py", top_level_only=True)
        - {
            "rkpipe",
            "engine_shared",
        }
        == set()
    )


# What `python runners/<engine>.py` sees on a board: the script's directory first on sys.path,
# and no rkpipe to import.
BOARD = """
import importlib.abc, runpy, sys
class NoRkpipe(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path, target=None):
        if name == "rkpipe" or name.startswith("rkpipe."):
            raise ModuleNotFoundError(name)
sys.meta_path.insert(0, NoRkpipe())
runners, engine = sys.argv[1], sys.argv[2]
sys.path.insert(0, runners)
sys.argv = [engine, "--help"]
runpy.run_path(f"{runners}/{engine}.py", run_name="__main__")
"""


@pytest.mark.parametrize("engine", RUNNERS)
def test_an_engine_runs_from_a_runners_dir_without_rkpipe(engine, tmp_path):
    for name in (f"{engine}.py", "engine_shared.py"):  # what RemoteTransport pushes
        shutil.copy(ENGINES / name, tmp_path / name)
    out = subprocess.run(
        [sys.executable, "-c", BOARD, str(tmp_path), engine], capture_output=True, text=True
    )
    assert out.returncode == 0, out.stderr
    assert "--model" in out.stdout
    (tmp_path / "engine_shared.py").unlink()  # deploy forgetting the shared file must show
    out = subprocess.run(
        [sys.executable, "-c", BOARD, str(tmp_path), engine], capture_output=True, text=True
    )
    assert out.returncode != 0 and "engine_shared" in out.stderr
