"""WER as the field computes it: Whisper's English normaliser, loaded without torch, and WER/CER
per test-set variant (clean, noise, tempo, voice)."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from rkpipe.asr.evaluate import clip_variant_metrics, clip_variants
from rkpipe.asr.normalizer import normalize_text
from rkpipe.report import asr_clip_variant_rows, asr_clip_variants


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        # titles spelled out, "'s" read as "is", punctuation dropped, "$20" kept as a number
        ("Mr. Smith's 1st car costs $20!", "mister smith is 1st car costs $20"),
        ("twenty five thousand", "25000"),  # numbers to digits
        ("One hundred and one dalmatians", "101 dalmatians"),
        ("It is 3.5 percent", "it is 3.5%"),
        ("The colour of the centre", "the color of the center"),  # British to American
        ("I can't, won't, they're", "i can not will not they are"),  # contractions
        ("Um, hmm. Yes?", "yes"),  # fillers and punctuation removed
    ],
)
def test_normalizer_is_whispers_english_normalizer(text, expected):
    assert normalize_text(text) == expected


def test_normalizer_loads_without_torch():
    code = (
        "import sys\n"
        "from rkpipe.asr.normalizer import normalize_text\n"
        "assert normalize_text('Twenty Colours!') == '20 colors'\n"
        "loaded = sorted(m for m in sys.modules if m.split('.')[0] in ('torch', 'whisper'))\n"
        "assert not loaded, loaded\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr


def _write_transcripts(path, rows):
    path.mkdir(parents=True, exist_ok=True)
    lines = [json.dumps(row) for row in rows]
    (path / "transcripts.jsonl").write_text("\n".join(lines) + "\n\n", encoding="utf-8")


def test_clip_variants_reads_old_and_new_test_sets(tmp_path):
    _write_transcripts(tmp_path / "old", [{"audio": "a.wav", "text": "x"}])
    assert clip_variants(tmp_path / "old") == {"a.wav": "clean"}
    rows = [
        {"audio": "a.wav", "text": "x", "variant": "clean", "made_with": "espeak-ng"},
        {"audio": "b.wav", "text": "x", "variant": "tempo_0.9", "made_with": "sox tempo 0.9"},
    ]
    _write_transcripts(tmp_path / "new", rows)
    assert clip_variants(tmp_path / "new") == {"a.wav": "clean", "b.wav": "tempo_0.9"}


def test_wer_per_clip_variant():
    refs = ["the cat sat", "a dog ran", "the cat sat", "a dog ran"]
    hyps = {
        "fp32": ["the cat sat", "a dog ran", "the cat sat", "a dog sat"],
        "quant": ["the cat sat", "a dog ran", "the bat sat", "a dog sat"],
    }
    groups = ["clean", "clean", "white_10db", "white_10db"]
    m = clip_variant_metrics(refs, hyps, groups)
    assert m["asr_wer.clean"] == 0.0 and m["asr_wer_fp32.clean"] == 0.0
    assert m["asr_wer_fp32.white_10db"] == pytest.approx(1 / 6)
    assert m["asr_wer.white_10db"] == pytest.approx(2 / 6)
    assert m["asr_wer_delta.white_10db"] == pytest.approx(100 / 6)
    assert m["asr_cer.white_10db"] > m["asr_cer_fp32.white_10db"] > 0.0
    assert m["asr_clips.clean"] == 2.0 and m["asr_clips.white_10db"] == 2.0


def test_wer_per_clip_variant_of_an_old_test_set_is_all_clean():
    refs, hyps = ["one two"], {"fp32": ["one two"], "quant": ["one"]}
    m = clip_variant_metrics(refs, hyps, ["clean"])
    assert sorted(m) == [
        "asr_cer.clean", "asr_cer_fp32.clean", "asr_clips.clean", "asr_wer.clean",
        "asr_wer_delta.clean", "asr_wer_fp32.clean",
    ]  # fmt: skip
    assert m["asr_wer.clean"] == 0.5 and m["asr_wer_delta.clean"] == 50.0


def test_variant_names_are_safe_metric_names():
    # MLflow refuses '+' in a metric name; an espeak voice may carry one
    m = clip_variant_metrics(["a"], {"fp32": ["a"], "quant": ["a"]}, ["voice_en+f3"])
    assert "asr_wer.voice_en_f3" in m


def test_report_rows_per_clip_variant():
    refs = ["a b", "a b", "a b"]
    hyps = {"fp32": ["a b", "a b", "a c"], "quant": ["a b", "a c", "a c"]}
    m = clip_variant_metrics(refs, hyps, ["white_20db", "clean", "pink_10db"])
    assert asr_clip_variants(m) == ["clean", "pink_10db", "white_20db"]
    rows = asr_clip_variant_rows(m)
    assert rows[0] == ["clean", "1", "0.500", "0.000", "50.00", "0.333", "0.000"]
