"""Calibration records from a tiny random Llama: deterministic bytes, dedupe, caps, budgets."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import pytest

from rkpipe.calibration.builder import build_records, load_tokenizer, summarize, write_calibration
from rkpipe.calibration.validate import validate_calibration_file
from rkpipe.config.schema import CalibConfig
from rkpipe.errors import CalibrationError

pytestmark = pytest.mark.integration

CFG = CalibConfig(num_samples=6, max_input_tokens=40, max_new_tokens=8, batch_size=4, seed=0)
MAX_CONTEXT = 56


def make_tiny_checkpoint(out: Path) -> Path:
    """A 2-layer Llama with a byte-level BPE tokenizer and a ChatML template."""
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
        tie_word_embeddings=False,
    )  # varied greedy text
    torch.manual_seed(0)
    LlamaForCausalLM(config).save_pretrained(out)
    tokenizer.save_pretrained(out)
    return out


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory) -> Path:
    return make_tiny_checkpoint(tmp_path_factory.mktemp("tiny-llama"))


def _inputs() -> list[dict]:
    texts = [
        "hello world",
        "你好!",
        "hello world",
        "what is 2 + 2?",
        "今天天气怎么样?",
        "this is a tiny model " * 30,
        "你好!",
        "tell me a story",
        "one more prompt",
        "and another one",
    ]
    items = [{"input": t, "target": None} for t in texts]
    items[3]["target"] = "it is four " * 40  # a given target, longer than the budget
    return items


def _tokens(tokenizer, text: str) -> int:
    return len(tokenizer.encode(text, add_special_tokens=False))


def test_build_is_byte_identical_and_respects_caps(model_dir, tmp_path):
    first = build_records(model_dir, _inputs(), CFG, MAX_CONTEXT)
    second = build_records(model_dir, _inputs(), CFG, MAX_CONTEXT)
    sha_a = write_calibration(first, tmp_path / "a.json")
    sha_b = write_calibration(second, tmp_path / "b.json")
    assert (tmp_path / "a.json").read_bytes() == (tmp_path / "b.json").read_bytes()
    assert sha_a == sha_b

    tokenizer = load_tokenizer(model_dir)
    assert len(first) == CFG.num_samples  # 10 inputs, 2 duplicates, capped at 6
    users = [r["input"].split("user\n", 1)[1].split("<|im_end|>", 1)[0] for r in first]
    assert users[:5] == [
        "hello world",
        "你好!",
        "what is 2 + 2?",
        "今天天气怎么样?",
        users[4],
    ] and len(set(users)) == len(users)
    assert users[4].startswith("this is a tiny model") and len(users[4]) < 600  # truncated
    for record in first:
        assert record["input"].startswith("<|im_start|>user\n")
        assert record["input"].endswith("<|im_start|>assistant\n")
        n_input = _tokens(tokenizer, record["input"])
        assert n_input <= CFG.max_input_tokens
        assert n_input + _tokens(tokenizer, record["target"]) <= MAX_CONTEXT
        assert isinstance(record["target"], str) and record["target"]  # generated, stripped
        assert record["target"] == record["target"].strip()
    assert first[2]["target"].startswith("it is four")  # given target kept, cut to fit
    assert validate_calibration_file(tmp_path / "a.json", MAX_CONTEXT, tokenizer) == first


def test_file_format_is_rockchips(model_dir, tmp_path):
    records = build_records(model_dir, _inputs()[:2], CFG, MAX_CONTEXT)
    path = tmp_path / "calib.json"
    write_calibration(records, path)
    text = path.read_text(encoding="utf-8")
    assert text == json.dumps(records, ensure_ascii=False, indent=2) + "\n"
    assert "你好" in text  # not \\u-escaped
    assert [set(r) for r in json.loads(text)] == [{"input", "target"}] * 2


def test_summary_metrics(model_dir):
    tokenizer = load_tokenizer(model_dir)
    records = build_records(model_dir, _inputs(), CFG, MAX_CONTEXT)
    metrics = summarize(records, tokenizer)
    assert metrics["calib_records"] == 6
    assert metrics["calib_input_tokens_max"] <= CFG.max_input_tokens
    assert metrics["calib_input_tokens_min"] <= metrics["calib_input_tokens_mean"]
    assert metrics["calib_total_tokens_max"] <= MAX_CONTEXT


def test_without_chat_template_inputs_stay_raw(model_dir):
    cfg = dataclasses.replace(CFG, apply_chat_template=False, num_samples=2)
    records = build_records(model_dir, _inputs(), cfg, MAX_CONTEXT)
    assert [r["input"] for r in records] == ["hello world", "你好!"]


def test_max_context_too_small_is_an_error(model_dir):
    with pytest.raises(CalibrationError, match="quant.max_context=8 leaves no room"):
        build_records(model_dir, _inputs(), CFG, 8)
