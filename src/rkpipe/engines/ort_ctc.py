"""CTC speech recognition (wav2vec2) on plain onnxruntime: greedy CTC decoding.

SELF-CONTAINED: this file imports only the standard library, numpy, onnxruntime and
``engine_shared.py`` (pushed beside it), so it runs on a board (aarch64) next to an exported model
directory that holds ``model.onnx`` (``input_values`` -> ``logits``) and ``engine.json`` (written
by ``rkpipe.asr.ctc``). Run it as a script for a benchmark, with the same command line and JSON
rows as ``ort_whisper``::

    python ort_ctc.py --model DIR --audio a.wav b.wav --warmup 1 --repetitions 3 --threads 2

``--max-new-tokens``, ``--language``, ``--task`` and ``--decoder`` are accepted and ignored (a
CTC model emits one frame label per 20 ms, no prompt), so a caller can treat both engines alike.

Decoding: optional zero-mean unit-variance normalisation of the waveform (``do_normalize``),
one encoder run, then per frame the argmax label; repeats are collapsed and blanks dropped.
``encoder_ms`` is that run, ``decoder_ms`` is 0 (the argmax is counted in ``total_ms``).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

try:  # the package (board=local, tests); on a board, the file pushed beside this one
    from rkpipe.engines import engine_shared as shared
except ImportError:
    import engine_shared as shared  # type: ignore[no-redef]

MODEL_FILE = "model.onnx"


# --------------------------------------------------------------------------- audio I/O


# --------------------------------------------------------------------------- decoding


def normalize(audio: np.ndarray) -> np.ndarray:
    """Zero mean, unit variance (``Wav2Vec2FeatureExtractor``'s ``do_normalize``, eps 1e-7)."""
    audio = np.asarray(audio, dtype=np.float32)
    return ((audio - audio.mean()) / np.sqrt(audio.var() + 1e-7)).astype(np.float32)


def ctc_greedy(logits: np.ndarray, blank_id: int) -> list[int]:
    """Greedy CTC labels of ``(frames, vocab)`` logits: argmax, collapse repeats, drop blanks."""
    best = np.asarray(logits).argmax(axis=-1).reshape(-1)
    if best.size == 0:
        return []
    keep = np.ones(best.size, dtype=bool)
    keep[1:] = best[1:] != best[:-1]
    return [int(i) for i in best[keep] if i != blank_id]


def ids_to_text(ids: list[int], id_to_token: list[str], delimiter: str, specials) -> str:
    """Join character tokens; the word delimiter becomes a space, special ids are dropped."""
    chars = [id_to_token[i] for i in ids if i not in specials and 0 <= i < len(id_to_token)]
    text = "".join(" " if c == delimiter else c for c in chars)
    return " ".join(text.split())


# --------------------------------------------------------------------------- engine


class OrtCtc:
    """A CTC model directory (``model.onnx`` + ``engine.json``) in an onnxruntime CPU session.

    Raises ``FileNotFoundError`` naming a missing file.
    """

    def __init__(self, model_dir: str, threads: int = 2, decoder: str = "auto") -> None:
        self.model_dir = Path(model_dir)
        self.info = json.loads(self._need("engine.json").read_text(encoding="utf-8"))
        self.session = shared.cpu_session(self._need(MODEL_FILE), threads)
        self.blank_id = int(self.info["blank_id"])
        self.specials = set(int(i) for i in self.info.get("special_ids", []))

    def _need(self, name: str) -> Path:
        path = self.model_dir / name
        if not path.is_file():
            raise FileNotFoundError(f"{path} is missing; export the model with rkpipe first")
        return path

    def features(self, audio: np.ndarray) -> np.ndarray:
        """``(1, samples)`` float32 model input (normalised if the model was trained so)."""
        audio = np.asarray(audio, dtype=np.float32)
        if self.info.get("do_normalize", True):
            audio = normalize(audio)
        return audio[None]

    def logits(self, features: np.ndarray) -> np.ndarray:
        """``(frames, vocab)`` logits of one ``(1, samples)`` input."""
        return self.session.run(None, {"input_values": features})[0][0]

    def text(self, ids: list[int]) -> str:
        """The transcript of CTC label ids (delimiter -> space)."""
        info = self.info
        return ids_to_text(ids, info["id_to_token"], info["word_delimiter"], self.specials)

    def transcribe_ids(
        self,
        audio: np.ndarray,
        max_new_tokens: int | None = None,
        language: str | None = None,
        task: str | None = None,
    ) -> dict:
        """Greedy-CTC-decode one float32 mono 16 kHz clip (the extra arguments are ignored).

        Returns ``{"ids", "prompt": [], "stopped": "ctc", "features_ms", "encoder_ms",
        "decoder_ms": 0.0, "total_ms", "audio_s"}``. Raises ``ValueError`` for an empty clip.
        """
        if len(audio) == 0:
            raise ValueError("empty audio clip (0 samples)")
        start = time.perf_counter()
        features = self.features(audio)
        t_features = time.perf_counter()
        logits = self.logits(features)
        t_encoder = time.perf_counter()
        ids = ctc_greedy(logits, self.blank_id)
        end = time.perf_counter()
        return {
            "ids": ids,
            "prompt": [],
            "stopped": "ctc",
            "features_ms": (t_features - start) * 1e3,
            "encoder_ms": (t_encoder - t_features) * 1e3,
            "decoder_ms": 0.0,
            "total_ms": (end - start) * 1e3,
            "audio_s": len(audio) / shared.SAMPLE_RATE,
        }


# --------------------------------------------------------------------------- CLI


def _parser() -> argparse.ArgumentParser:
    parser = shared.asr_parser("Benchmark a CTC ONNX model on onnxruntime CPU.")
    parser.add_argument("--text", action="store_true", help="add the decoded text to each row")
    for ignored in ("--max-new-tokens", "--language", "--task", "--decoder"):
        parser.add_argument(ignored, default=None, help="ignored (CTC); accepted like ort_whisper")
    return parser


def main(argv: list[str] | None = None) -> int:
    """CLI entry: print one JSON line per clip and repetition (warm-up rows flagged)."""
    args = _parser().parse_args(argv)
    engine = OrtCtc(args.model, threads=args.threads)
    for path in args.audio:
        audio = shared.load_clip(path)
        name = Path(path).name
        for warm, count in ((True, args.warmup), (False, args.repetitions)):
            for rep in range(count):
                result = engine.transcribe_ids(audio)
                row = shared.asr_row(name, rep, warm, result)
                if args.text:
                    row["text"] = engine.text(result["ids"])
                print(json.dumps(row), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
