"""Synthesize a small spoken test set with espeak-ng + sox (offline, deterministic).

Each non-empty line of the sentences file becomes ``clip_XXX.wav`` (16 kHz, mono, 16-bit PCM)
and a ``{"audio": ..., "text": ...}`` line of ``transcripts.jsonl``. sox runs with ``-R``
(repeatable): without it, its dither seeds from the clock and two runs differ byte-wise.
"""

from __future__ import annotations

import json
import logging
import shutil
import subprocess
import time
from pathlib import Path

from rkpipe.errors import AsrError
from rkpipe.io import atomic_path, sha256_file

logger = logging.getLogger(__name__)

TRANSCRIPTS = "transcripts.jsonl"
SAMPLE_RATE = 16000
INSTALL_HINT = "install them with: apt-get install -y espeak-ng sox"


def read_sentences(sentences_file: Path) -> list[str]:
    """The stripped non-empty lines of ``sentences_file``; :class:`AsrError` if none or missing."""
    path = Path(sentences_file)
    if not path.is_file():
        raise AsrError(f"sentences file {path} not found")
    sentences = [line.strip() for line in path.read_text(encoding="utf-8").splitlines()]
    sentences = [s for s in sentences if s]
    if not sentences:
        raise AsrError(f"{path} has no sentences: write one English sentence per line")
    return sentences


def synthesize_testset(
    sentences_file: Path, out_dir: Path, voice: str = "en-us", speed: int = 160
) -> dict:
    """Speak every sentence of ``sentences_file`` into ``out_dir`` (written atomically).

    ``espeak-ng -v VOICE -s SPEED -w raw.wav`` (text on stdin), then
    ``sox -R raw.wav -r 16000 -c 1 -b 16 clip_XXX.wav``; writes ``transcripts.jsonl``. Returns
    ``{"clips", "audio_s", "synth_s", "voice", "speed", "espeak_ng", "sox",
    "transcripts_sha256"}``. Raises :class:`AsrError` if espeak-ng or sox is missing (with the
    apt-get command), the sentences file is empty, or a tool fails.
    """
    tools = _find_tools()
    sentences = read_sentences(sentences_file)
    out_dir = Path(out_dir)
    start = time.perf_counter()
    with atomic_path(out_dir) as tmp:
        tmp.mkdir(parents=True)
        rows = [_speak(tools, text, tmp, i, voice, speed) for i, text in enumerate(sentences)]
        lines = "".join(json.dumps({"audio": r["audio"], "text": r["text"]}) + "\n" for r in rows)
        (tmp / TRANSCRIPTS).write_text(lines, encoding="utf-8")
    seconds = time.perf_counter() - start
    result = {
        "clips": len(rows),
        "audio_s": round(sum(r["audio_s"] for r in rows), 3),
        "synth_s": round(seconds, 3),
        "voice": voice,
        "speed": speed,
        "espeak_ng": _version([tools["espeak-ng"], "--version"]),
        "sox": _version([tools["sox"], "--version"]),
        "transcripts_sha256": sha256_file(out_dir / TRANSCRIPTS),
    }
    logger.info(
        "synthesized %d clips (%.1f s of audio) in %.2f s", len(rows), result["audio_s"], seconds
    )
    return result


def _find_tools() -> dict[str, str]:
    tools = {name: shutil.which(name) for name in ("espeak-ng", "sox")}
    missing = [name for name, path in tools.items() if path is None]
    if missing:
        raise AsrError(f"{' and '.join(missing)} not found on PATH; {INSTALL_HINT}")
    return tools  # type: ignore[return-value]


def _speak(tools: dict, text: str, out: Path, index: int, voice: str, speed: int) -> dict:
    name = f"clip_{index:03d}.wav"
    raw = out / f".raw_{index:03d}.wav"
    _run([tools["espeak-ng"], "-v", voice, "-s", str(speed), "-w", str(raw), "--stdin"], text)
    _run(
        [
            tools["sox"],
            "-R",
            str(raw),
            "-r",
            str(SAMPLE_RATE),
            "-c",
            "1",
            "-b",
            "16",
            str(out / name),
        ]
    )
    raw.unlink()
    return {"audio": name, "text": text, "audio_s": _duration(out / name)}


def _run(cmd: list[str], stdin: str | None = None) -> None:
    proc = subprocess.run(cmd, input=stdin, capture_output=True, text=True, check=False)
    if proc.returncode != 0:
        raise AsrError(
            f"{Path(cmd[0]).name} failed (exit {proc.returncode}): {proc.stderr.strip()}; "
            f"command: {' '.join(cmd)}"
        )


def _duration(path: Path) -> float:
    import wave

    with wave.open(str(path), "rb") as handle:
        return handle.getnframes() / handle.getframerate()


def _version(cmd: list[str]) -> str:
    """The first dotted version number a ``--version`` prints (e.g. ``1.51``, ``14.4.2``)."""
    import re

    proc = subprocess.run(cmd, capture_output=True, text=True, check=False)
    found = re.search(r"\d+(?:\.\d+)+", proc.stdout or proc.stderr or "")
    return found.group(0) if found else "unknown"
