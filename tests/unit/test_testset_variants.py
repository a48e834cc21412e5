"""The harder test set variants: noise at an exact SNR, tempo, a second voice; deterministic."""

from __future__ import annotations

import json
import shutil
import wave

import numpy as np
import pytest

from rkpipe.asr.testset import (
    DEFAULT_VARIANTS,
    TRANSCRIPTS,
    clip_variants,
    parse_variant,
    synthesize_testset,
)
from rkpipe.errors import AsrError

needs_tools = pytest.mark.skipif(
    shutil.which("espeak-ng") is None or shutil.which("sox") is None,
    reason="espeak-ng/sox not installed (apt-get install -y espeak-ng sox); CI installs them",
)
SENTENCES = "The cat sat on the mat.\nTurn left at the old bridge.\n"


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    if shutil.which("espeak-ng") is None or shutil.which("sox") is None:
        pytest.skip("espeak-ng/sox not installed (apt-get install -y espeak-ng sox)")
    root = tmp_path_factory.mktemp("variants")
    (root / "sentences.txt").write_text(SENTENCES)
    summary = synthesize_testset(root / "sentences.txt", root / "a")
    return root, summary


def _samples(path):
    with wave.open(str(path), "rb") as handle:
        data = handle.readframes(handle.getnframes())
    return np.frombuffer(data, dtype="<i2").astype(np.float64)


def _rows(directory):
    return [json.loads(line) for line in (directory / TRANSCRIPTS).read_text().splitlines()]


@needs_tools
def test_two_runs_are_byte_identical(built):
    root, summary = built
    again = synthesize_testset(root / "sentences.txt", root / "b")
    first = sorted(p.name for p in (root / "a").iterdir())
    assert first == sorted(p.name for p in (root / "b").iterdir())
    assert len(first) == 2 * len(DEFAULT_VARIANTS) + 1  # the clips and transcripts.jsonl
    for name in first:
        assert (root / "a" / name).read_bytes() == (root / "b" / name).read_bytes(), name
    assert again == {**summary, "synth_s": again["synth_s"]}


@needs_tools
def test_summary_counts_variants(built):
    _, summary = built
    assert summary["variants"] == {name: 2 for name in DEFAULT_VARIANTS}
    assert summary["clips"] == 2 * len(DEFAULT_VARIANTS)


@needs_tools
@pytest.mark.parametrize("variant", ["white_20db", "white_10db", "pink_20db", "pink_10db"])
def test_noise_is_mixed_at_the_target_snr(built, variant):
    directory = built[0] / "a"
    target = parse_variant(variant)[1][1]
    for index in range(2):
        clean = _samples(directory / f"clip_{index:03d}.wav")
        noisy = _samples(directory / f"clip_{index:03d}_{variant}.wav")
        assert noisy.shape == clean.shape
        noise = noisy - clean
        snr = 20 * np.log10(np.sqrt(np.mean(clean**2)) / np.sqrt(np.mean(noise**2)))
        assert abs(snr - target) < 0.5, (variant, index, snr)


@needs_tools
@pytest.mark.parametrize("factor", [0.9, 1.1])
def test_tempo_changes_duration_by_the_factor(built, factor):
    directory = built[0] / "a"
    for index in range(2):
        clean = _samples(directory / f"clip_{index:03d}.wav").size
        changed = _samples(directory / f"clip_{index:03d}_tempo_{factor}.wav").size
        assert changed == pytest.approx(clean / factor, rel=0.02)


@needs_tools
def test_transcripts_carry_variant_and_made_with(built):
    directory = built[0] / "a"
    rows = _rows(directory)
    assert [r["variant"] for r in rows] == list(DEFAULT_VARIANTS) * 2
    assert all(set(r) == {"audio", "text", "variant", "made_with"} for r in rows)
    assert rows[0]["audio"] == "clip_000.wav" and rows[0]["text"] == "The cat sat on the mat."
    for row in rows:
        commands = row["made_with"]["commands"]
        assert commands[0].startswith("espeak-ng -v ") and row["audio"] in commands[-1].split()
    noisy = next(r for r in rows if r["variant"] == "pink_10db")["made_with"]
    assert (noisy["noise"], noisy["snr_db"]) == ("pink", 10.0)
    assert "synth" in noisy["commands"][-2] and "pinknoise" in noisy["commands"][-2]
    voiced = next(r for r in rows if r["variant"] == "voice_en-gb")["made_with"]
    assert voiced["voice"] == "en-gb" and "-v en-gb" in voiced["commands"][0]


@needs_tools
def test_clip_variants_maps_every_file(built):
    directory = built[0] / "a"
    variants = clip_variants(directory)
    assert set(variants) == {p.name for p in directory.glob("*.wav")}
    assert variants["clip_001.wav"] == "clean"
    assert variants["clip_001_tempo_1.1.wav"] == "tempo_1.1"


@needs_tools
def test_new_format_still_loads_for_evaluation(built):
    from rkpipe.asr.evaluate import load_testset

    clips = load_testset(built[0] / "a")
    assert len(clips) == 2 * len(DEFAULT_VARIANTS)


@needs_tools
def test_variant_subset_without_clean_leaves_no_other_files(built):
    root = built[0]
    summary = synthesize_testset(root / "sentences.txt", root / "c", variants=["tempo_1.1"])
    assert summary["variants"] == {"tempo_1.1": 2}
    names = sorted(p.name for p in (root / "c").iterdir())
    assert names == ["clip_000_tempo_1.1.wav", "clip_001_tempo_1.1.wav", TRANSCRIPTS]


def test_old_transcripts_without_variant_read_as_clean(tmp_path):
    lines = [{"audio": "clip_000.wav", "text": "a"}, {"audio": "clip_001.wav", "text": "b"}]
    (tmp_path / TRANSCRIPTS).write_text("".join(json.dumps(x) + "\n" for x in lines) + "\n")
    assert clip_variants(tmp_path) == {"clip_000.wav": "clean", "clip_001.wav": "clean"}


def test_clip_variants_names_a_missing_or_bad_file(tmp_path):
    with pytest.raises(AsrError, match="not found"):
        clip_variants(tmp_path)
    (tmp_path / TRANSCRIPTS).write_text('{"text": "no audio"}\n')
    with pytest.raises(AsrError, match=r"transcripts.jsonl:1: expected"):
        clip_variants(tmp_path)


def test_variant_names_are_checked_before_any_work(tmp_path):
    assert parse_variant("white_20db") == ("noise", ("white", 20.0))
    assert parse_variant("tempo_0.9") == ("tempo", ("0.9",))
    assert parse_variant("voice_en-us+f3") == ("voice", ("en-us+f3",))
    for bad, message in [
        (["echo"], "unknown test set variant 'echo'"),
        (["brown_10db"], "unknown test set variant"),
        (["tempo_0.05"], "tempo factor must be in"),
        (["clean", "clean"], "listed twice"),
        ([], "no test set variants"),
    ]:
        with pytest.raises(AsrError, match=message):
            synthesize_testset(tmp_path / "missing.txt", tmp_path / "out", variants=bad)
    assert not (tmp_path / "out").exists()
