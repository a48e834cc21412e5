"""Synthesize a small spoken test set with espeak-ng + sox (offline, deterministic).

Each non-empty line of the sentences file becomes ``clip_XXX.wav`` (16 kHz, mono, 16-bit PCM,
variant ``clean``) plus harder variants of it, ``clip_XXX_<variant>.wav``:

* ``white_20db`` / ``pink_10db`` ...: sox ``synth`` noise scaled so that the SNR against the
  clean clip's RMS (whole clip) is exactly the target, mixed in with ``sox -m``;
* ``tempo_0.9`` / ``tempo_1.1`` ...: ``sox tempo -s`` (speed changes, pitch does not);
* ``voice_<name>``: the sentence spoken again with another espeak-ng voice.

Every clip is a line ``{"audio", "text", "variant", "made_with"}`` of ``transcripts.jsonl``;
``made_with`` holds the exact commands (run in the test set directory, relative names) and their
parameters. sox always runs with ``-R`` (repeatable): without it, its dither and noise seed from
the clock and two runs differ byte-wise; with it, ``synth`` noise is the same every run.
"""

from __future__ import annotations

import json
import logging
import re
import shlex
import shutil
import subprocess
import time
from collections import Counter
from pathlib import Path

from rkpipe.errors import AsrError
from rkpipe.io import atomic_path, sha256_file

logger = logging.getLogger(__name__)

TRANSCRIPTS = "transcripts.jsonl"
SAMPLE_RATE = 16000
INSTALL_HINT = "install them with: apt-get install -y espeak-ng sox"
CLEAN = "clean"
DEFAULT_VARIANTS = (
    CLEAN,
    "white_20db",
    "white_10db",
    "pink_20db",
    "pink_10db",
    "tempo_0.9",
    "tempo_1.1",
    "voice_en-gb",
)
_VARIANT = re.compile(
    r"(?P<clean>clean)|(?P<noise>white|pink)_(?P<snr>\d+(?:\.\d+)?)db"
    r"|tempo_(?P<tempo>\d+(?:\.\d+)?)|voice_(?P<voice>[a-z][\w+-]*)"
)
_VARIANT_HINT = "clean, white_<snr>db, pink_<snr>db, tempo_<factor> or voice_<espeak-ng voice>"


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


def clip_variants(testset_dir: Path) -> dict[str, str]:
    """``{audio file name: variant}`` from ``transcripts.jsonl``; lines without one are clean.

    An old test set (before variants) thus reads as all clean. Raises :class:`AsrError` if the
    file is missing or a line is not JSON with an ``audio`` key.
    """
    path = Path(testset_dir) / TRANSCRIPTS
    if not path.is_file():
        raise AsrError(f"{path} not found: synthesize the test set first")
    variants = {}
    for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
            variants[str(row["audio"])] = str(row.get("variant") or CLEAN)
        except (json.JSONDecodeError, KeyError, TypeError, AttributeError) as exc:
            expected = '{"audio": "clip.wav", ...}'
            raise AsrError(f"{path}:{number}: expected {expected}, got {line[:80]!r}") from exc
    return variants


def parse_variant(name: str) -> tuple[str, tuple]:
    """``(kind, args)`` of a variant name: ``("noise", ("white", 20.0))``, ``("tempo", ("0.9",))``.

    Raises :class:`AsrError` for a name that is none of :data:`_VARIANT_HINT`.
    """
    found = _VARIANT.fullmatch(str(name))
    if found is None:
        raise AsrError(f"unknown test set variant {name!r}; expected {_VARIANT_HINT}")
    if found["clean"]:
        return "clean", ()
    if found["noise"]:
        return "noise", (found["noise"], float(found["snr"]))
    if found["tempo"]:
        # the factor stays a string: the command line gets exactly what the name says
        if not 0.1 <= float(found["tempo"]) <= 10:
            raise AsrError(f"test set variant {name!r}: the tempo factor must be in [0.1, 10]")
        return "tempo", (found["tempo"],)
    return "voice", (found["voice"],)


def synthesize_testset(
    sentences_file: Path,
    out_dir: Path,
    voice: str = "en-us",
    speed: int = 160,
    variants: tuple[str, ...] | list[str] = DEFAULT_VARIANTS,
) -> dict:
    """Speak every sentence of ``sentences_file`` into ``out_dir`` in every variant (atomically).

    ``espeak-ng -v VOICE -s SPEED -w raw.wav`` (text on stdin), then
    ``sox -R raw.wav -r 16000 -c 1 -b 16 clip_XXX.wav``; the other ``variants`` (names as in
    :func:`parse_variant`) derive from that clip; writes ``transcripts.jsonl``. Returns
    ``{"clips", "variants" ({variant: clips}), "audio_s", "synth_s", "voice", "speed",
    "espeak_ng", "sox", "transcripts_sha256"}``. Raises :class:`AsrError` if espeak-ng or sox is
    missing (with the apt-get command), the sentences file is empty, a variant is unknown or
    repeated, or a tool fails.
    """
    specs = _variant_specs(variants)
    tools = _find_tools()
    sentences = read_sentences(sentences_file)
    out_dir = Path(out_dir)
    start = time.perf_counter()
    with atomic_path(out_dir) as tmp:
        tmp.mkdir(parents=True)
        rows = []
        for index, text in enumerate(sentences):
            rows += _sentence_rows(tools, text, tmp, index, (voice, speed), specs)
        (tmp / TRANSCRIPTS).write_text("".join(_line(r) for r in rows), encoding="utf-8")
    seconds = time.perf_counter() - start
    result = {
        "clips": len(rows),
        "variants": dict(Counter(r["variant"] for r in rows)),
        "audio_s": round(sum(r["audio_s"] for r in rows), 3),
        "synth_s": round(seconds, 3),
        "voice": voice,
        "speed": speed,
        "espeak_ng": _version([tools["espeak-ng"], "--version"]),
        "sox": _version([tools["sox"], "--version"]),
        "transcripts_sha256": sha256_file(out_dir / TRANSCRIPTS),
    }
    logger.info(
        "synthesized %d clips in %d variants (%.1f s of audio) in %.2f s",
        len(rows),
        len(specs),
        result["audio_s"],
        seconds,
    )
    return result


def _variant_specs(variants) -> dict[str, tuple[str, tuple]]:
    names = [str(v) for v in variants]
    if not names:
        raise AsrError(f"no test set variants given; expected some of {_VARIANT_HINT}")
    repeated = sorted({n for n in names if names.count(n) > 1})
    if repeated:
        raise AsrError(f"test set variants {repeated} are listed twice; list each once")
    return {name: parse_variant(name) for name in names}


def _line(row: dict) -> str:
    return json.dumps({k: row[k] for k in ("audio", "text", "variant", "made_with")}) + "\n"


def _find_tools() -> dict[str, str]:
    tools = {name: shutil.which(name) for name in ("espeak-ng", "sox")}
    missing = [name for name, path in tools.items() if path is None]
    if missing:
        raise AsrError(f"{' and '.join(missing)} not found on PATH; {INSTALL_HINT}")
    return tools  # type: ignore[return-value]


def _sentence_rows(
    tools: dict, text: str, out: Path, index: int, speaker: tuple[str, int], specs: dict
) -> list[dict]:
    """One row per variant of sentence ``index``; every variant derives from the clean clip."""
    base = f"clip_{index:03d}.wav"
    clean = _speak(tools, text, out, base, *speaker)
    rows = []
    for name, (kind, args) in specs.items():
        audio = base if kind == "clean" else f"clip_{index:03d}_{name}.wav"
        if kind == "clean":
            made = clean
        elif kind == "voice":
            made = _speak(tools, text, out, audio, args[0], speaker[1])
        else:
            made = _derive(tools, out, base, audio, kind, args)
            # the record names the whole chain, from the text to this file
            made = {**made, "commands": clean["commands"] + made["commands"]}
        row = {"audio": audio, "text": text, "variant": name, "made_with": made}
        rows.append({**row, "audio_s": _duration(out / audio)})
    if CLEAN not in specs:
        (out / base).unlink()
    return rows


def _speak(tools: dict, text: str, out: Path, name: str, voice: str, speed: int) -> dict:
    raw = f".raw_{Path(name).stem}.wav"
    speak = ["espeak-ng", "-v", voice, "-s", str(speed), "-w", raw, "--stdin"]
    convert = ["sox", "-R", raw, "-r", str(SAMPLE_RATE), "-c", "1", "-b", "16", name]
    _run(tools, speak, out, stdin=text)
    _run(tools, convert, out)
    (out / raw).unlink()
    return {"commands": [shlex.join(speak), shlex.join(convert)], "voice": voice, "speed": speed}


def _derive(tools: dict, out: Path, base: str, audio: str, kind: str, args: tuple) -> dict:
    if kind == "noise":
        return _add_noise(tools, out, base, audio, *args)
    tempo = ["sox", "-R", base, audio, "tempo", "-s", args[0]]
    _run(tools, tempo, out)
    return {"commands": [shlex.join(tempo)], "tempo": float(args[0])}


def _add_noise(tools: dict, out: Path, base: str, audio: str, color: str, snr_db: float) -> dict:
    """Mix ``color`` noise into ``base`` at exactly ``snr_db`` (RMS over the whole clip)."""
    noise = f".noise_{Path(audio).stem}.wav"
    clean = _samples(out / base)
    # "Ns" is N samples at the rate of the null input, so -r goes before -n (else 48 kHz)
    synth = ["sox", "-R", "-r", str(SAMPLE_RATE), "-n", "-c", "1", "-b", "16", noise]
    synth += ["synth", f"{clean.size}s", f"{color}noise"]
    _run(tools, synth, out)
    samples = _samples(out / noise)
    if samples.size != clean.size:
        raise AsrError(
            f"sox made {samples.size} noise samples for {clean.size}: {shlex.join(synth)}"
        )
    clean_rms, noise_rms = _rms(clean), _rms(samples)
    if clean_rms == 0 or noise_rms == 0:
        raise AsrError(f"{out / base} or its noise is silent; cannot mix at {snr_db} dB SNR")
    # 6 significant digits: the SNR error this rounding makes is below 1e-4 dB
    gain = f"{clean_rms / (noise_rms * 10 ** (snr_db / 20)):.6g}"
    mix = ["sox", "-R", "-m", "-v", "1", base, "-v", gain, noise, audio]
    stderr = _run(tools, mix, out)
    if "clip" in stderr.lower():
        logger.warning("%s clipped while mixing; its SNR is slightly off: %s", audio, stderr)
    (out / noise).unlink()
    return {
        "commands": [shlex.join(synth), shlex.join(mix)],
        "noise": color,
        "snr_db": snr_db,
        "noise_gain": float(gain),
        "clean_rms": round(clean_rms, 3),
        "noise_rms": round(noise_rms, 3),
    }


def _run(tools: dict, cmd: list[str], cwd: Path, stdin: str | None = None) -> str:
    """Run ``cmd`` (its first word a tool name) in ``cwd``; its stderr, or :class:`AsrError`."""
    argv = [tools[cmd[0]], *cmd[1:]]
    proc = subprocess.run(argv, input=stdin, capture_output=True, text=True, check=False, cwd=cwd)
    if proc.returncode != 0:
        raise AsrError(
            f"{cmd[0]} failed (exit {proc.returncode}): {proc.stderr.strip()}; "
            f"command: {shlex.join(argv)}"
        )
    return proc.stderr


def _samples(path: Path):
    import wave

    import numpy as np

    with wave.open(str(path), "rb") as handle:
        if handle.getsampwidth() != 2:
            raise AsrError(f"{path} is not 16-bit PCM; re-create the test set")
        data = handle.readframes(handle.getnframes())
    return np.frombuffer(data, dtype="<i2").astype(np.float64)


def _rms(samples) -> float:
    import numpy as np

    return float(np.sqrt(np.mean(samples**2))) if samples.size else 0.0


def _duration(path: Path) -> float:
    import wave

    with wave.open(str(path), "rb") as handle:
        return handle.getnframes() / handle.getframerate()


def _version(cmd: list[str]) -> str:
    """The first dotted version number a ``--version`` prints (e.g. ``1.51``, ``14.4.2``)."""
    proc = subprocess.run(cmd, capture_output=True, text=True, check=False)
    found = re.search(r"\d+(?:\.\d+)+", proc.stdout or proc.stderr or "")
    return found.group(0) if found else "unknown"
