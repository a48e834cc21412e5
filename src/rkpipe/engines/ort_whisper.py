"""Whisper speech recognition on plain onnxruntime: log-mel in numpy, greedy decoding with KV cache.

SELF-CONTAINED: this file imports only the standard library, numpy, onnxruntime and
``engine_shared.py`` (pushed beside it), so it runs on a board (aarch64) next to an exported model
directory that holds ``encoder_model.onnx``, the decoders, ``mel_filters.npy`` and ``engine.json``
(written by ``rkpipe.asr.export``). Run it as a script for a benchmark::

    python ort_whisper.py --model DIR --audio a.wav b.wav --warmup 1 --repetitions 3 \
        --threads 2 --max-new-tokens 32

which prints one JSON line per clip and repetition.

Decoding: the default (``decoder="auto"``) runs ``decoder_model.onnx`` for the prompt and
``decoder_with_past_model.onnx`` for every later token (two sessions, no control flow). If only
``decoder_model_merged.onnx`` is present it is used instead, driving its ``use_cache_branch``
input (empty past tensors on the first step). Both give the same ids (checked on onnxruntime
1.32); the merged file alone is the smaller push (one copy of the decoder weights), the split pair
avoids the If node. Sessions are created with thread spinning off: three spinning pools on a
2-core board steal the cores from one another.

Only short-form audio is handled: input longer than ``chunk_length`` (30 s) is truncated, as
``WhisperFeatureExtractor`` does.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
import onnxruntime as ort

try:  # the package (board=local, tests); on a board, the file pushed beside this one
    from rkpipe.engines import engine_shared as shared
except ImportError:
    import engine_shared as shared  # type: ignore[no-redef]

ENCODER_FILE = "encoder_model.onnx"
DECODER_FILE = "decoder_model.onnx"
DECODER_WITH_PAST_FILE = "decoder_with_past_model.onnx"
MERGED_FILE = "decoder_model_merged.onnx"


# --------------------------------------------------------------------------- audio I/O


# --------------------------------------------------------------------------- features


def log_mel_spectrogram(
    audio: np.ndarray,
    mel_filters: np.ndarray,
    n_fft: int = 400,
    hop_length: int = 160,
    n_samples: int = 480000,
) -> np.ndarray:
    """Whisper's log-mel features of one mono 16 kHz clip, shape ``(n_mels, n_samples // hop)``.

    Same recipe as ``WhisperFeatureExtractor``: zero-pad/trim to ``n_samples`` (30 s), centred
    STFT with reflect padding and a periodic Hann window, power spectrum, mel projection with
    ``mel_filters`` (``(n_mels, n_fft // 2 + 1)``), ``log10(max(x, 1e-10))``, drop the last frame,
    clamp to ``max - 8`` and scale ``(x + 4) / 4``.
    """
    audio = np.asarray(audio, dtype=np.float32)[:n_samples]
    audio = np.pad(audio, (0, n_samples - len(audio)))
    padded = np.pad(audio, (n_fft // 2, n_fft // 2), mode="reflect")
    n_frames = 1 + (len(padded) - n_fft) // hop_length
    frames = np.lib.stride_tricks.as_strided(
        padded,
        shape=(n_frames, n_fft),
        strides=(padded.strides[0] * hop_length, padded.strides[0]),
        writeable=False,
    )
    window = (0.5 - 0.5 * np.cos(2.0 * np.pi * np.arange(n_fft) / n_fft)).astype(np.float32)
    spectrum = np.fft.rfft(frames * window, axis=1)
    power = (spectrum.real**2 + spectrum.imag**2).astype(np.float32)
    mel = (power[:-1] @ mel_filters.astype(np.float32).T).T  # the last frame is dropped
    log_spec = np.log10(np.maximum(mel, 1e-10))
    log_spec = np.maximum(log_spec, log_spec.max() - 8.0)
    return ((log_spec + 4.0) / 4.0).astype(np.float32)


# --------------------------------------------------------------------------- engine


class OrtWhisper:
    """A Whisper model directory loaded into onnxruntime CPU sessions.

    ``model_dir`` holds the ONNX files, ``mel_filters.npy`` and ``engine.json``; ``threads`` sets
    ``intra_op_num_threads``; ``decoder`` is ``"auto"``, ``"split"`` (decoder + decoder_with_past)
    or ``"merged"`` (decoder_model_merged with ``use_cache_branch``). Raises ``FileNotFoundError``
    naming a missing file.
    """

    def __init__(self, model_dir: str, threads: int = 2, decoder: str = "auto") -> None:
        self.model_dir = Path(model_dir)
        self.info = json.loads(self._need("engine.json").read_text(encoding="utf-8"))
        self.mel_filters = np.load(self._need("mel_filters.npy")).astype(np.float32)
        self.decoder_mode = self._pick_decoder(decoder)
        self.encoder = shared.cpu_session(self._need(ENCODER_FILE), threads)
        if self.decoder_mode == "split":
            self.decoder = shared.cpu_session(self._need(DECODER_FILE), threads)
            self.decoder_with_past = shared.cpu_session(self._need(DECODER_WITH_PAST_FILE), threads)
        else:
            self.decoder = shared.cpu_session(self._need(MERGED_FILE), threads)
            self.decoder_with_past = self.decoder
        self.num_layers = int(self.info["decoder_layers"])
        self._kv_shape = self._past_shape(self.decoder)

    def _need(self, name: str) -> Path:
        path = self.model_dir / name
        if not path.is_file():
            raise FileNotFoundError(f"{path} is missing; export the model with rkpipe first")
        return path

    def _pick_decoder(self, decoder: str) -> str:
        if decoder not in ("auto", "split", "merged"):
            raise ValueError(f"decoder must be auto, split or merged, got {decoder!r}")
        if decoder != "auto":
            return decoder
        split = all((self.model_dir / f).is_file() for f in (DECODER_FILE, DECODER_WITH_PAST_FILE))
        return "split" if split else "merged"

    @staticmethod
    def _past_shape(session: ort.InferenceSession) -> tuple[int, int]:
        """(heads, head_dim) of the KV tensors, read from the decoder's first present output."""
        for out in session.get_outputs():
            if out.name.startswith("present."):
                return int(out.shape[1]), int(out.shape[3])
        raise ValueError("the decoder has no present.* outputs: was it exported with past?")

    # ------------------------------------------------------------------ public API

    def features(self, audio: np.ndarray) -> np.ndarray:
        """Log-mel features ``(1, n_mels, frames)`` of a float32 mono 16 kHz clip."""
        mel = log_mel_spectrogram(
            audio,
            self.mel_filters,
            n_fft=int(self.info["n_fft"]),
            hop_length=int(self.info["hop_length"]),
            n_samples=int(self.info["n_samples"]),
        )
        return mel[None]

    def encode(self, features: np.ndarray) -> np.ndarray:
        """Run the encoder on ``(1, n_mels, frames)`` features; returns the hidden states."""
        return self.encoder.run(None, {"input_features": features})[0]

    def prompt_ids(self, language: str | None = "en", task: str = "transcribe") -> list[int]:
        """``[<|startoftranscript|>, <|lang|>?, <|task|>, <|notimestamps|>]``.

        ``language`` is a code such as ``"en"`` (or ``None`` to leave it out); raises
        ``ValueError`` for an unknown language or task.
        """
        ids = [int(self.info["decoder_start_token_id"])]
        if not self.info.get("multilingual", True):
            # *.en checkpoints were trained without language and task tokens
            if language not in (None, "en") or task != "transcribe":
                raise ValueError(
                    f"an English-only model only transcribes English, got language={language!r} "
                    f"task={task!r}; use language null (or en) and task transcribe"
                )
            return [*ids, int(self.info["no_timestamps_token_id"])]
        if language is not None:
            lang_to_id = self.info["lang_to_id"]
            if language not in lang_to_id:
                raise ValueError(f"unknown language {language!r}; known: {sorted(lang_to_id)}")
            ids.append(int(lang_to_id[language]))
        task_to_id = self.info["task_to_id"]
        if task not in task_to_id:
            raise ValueError(f"unknown task {task!r}; known: {sorted(task_to_id)}")
        ids.append(int(task_to_id[task]))
        ids.append(int(self.info["no_timestamps_token_id"]))
        return ids

    def transcribe_ids(
        self,
        audio: np.ndarray,
        max_new_tokens: int,
        language: str | None = "en",
        task: str = "transcribe",
    ) -> dict:
        """Greedy-decode one float32 mono 16 kHz clip.

        Returns ``{"ids": generated ids without the prompt and without the final
        <|endoftext|>, "prompt": [...], "stopped": "eot"|"max_new_tokens", "features_ms",
        "encoder_ms", "decoder_ms", "total_ms", "audio_s"}``. ``encoder_ms`` covers the encoder
        run only; ``total_ms`` is features + encoder + decoder wall time. Raises ``ValueError``
        when prompt + ``max_new_tokens`` exceeds the decoder's ``max_target_positions``.
        """
        prompt = self.prompt_ids(language, task)
        limit = int(self.info["max_target_positions"]) - len(prompt)
        if max_new_tokens > limit:
            raise ValueError(
                f"max_new_tokens must be <= {limit} for this model, got {max_new_tokens}"
            )
        start = time.perf_counter()
        features = self.features(audio)
        t_features = time.perf_counter()
        hidden = self.encode(features)
        t_encoder = time.perf_counter()
        ids, stopped = self._greedy(hidden, prompt, max_new_tokens)
        end = time.perf_counter()
        return {
            "ids": ids,
            "prompt": prompt,
            "stopped": stopped,
            "features_ms": (t_features - start) * 1e3,
            "encoder_ms": (t_encoder - t_features) * 1e3,
            "decoder_ms": (end - t_encoder) * 1e3,
            "total_ms": (end - start) * 1e3,
            "audio_s": len(audio) / shared.SAMPLE_RATE,
        }

    # ------------------------------------------------------------------ decoding

    def decode_hidden(
        self, hidden: np.ndarray, max_new_tokens: int, language: str | None, task: str
    ) -> list[int]:
        """Greedy ids from encoder hidden states made elsewhere (the rknn simulator's)."""
        hidden = np.asarray(hidden, dtype=np.float32)
        return self._greedy(hidden, self.prompt_ids(language, task), max_new_tokens)[0]

    def _greedy(self, hidden: np.ndarray, prompt: list[int], max_new_tokens: int):
        eot = int(self.info["eos_token_id"])
        suppress = np.asarray(self.info.get("suppress_tokens") or [], dtype=np.int64)
        begin_suppress = np.asarray(self.info.get("begin_suppress_tokens") or [], dtype=np.int64)
        ids: list[int] = []
        logits, past = self._first_step(hidden, prompt)
        for step in range(max_new_tokens):
            scores = logits[0, -1].astype(np.float32, copy=True)
            scores[suppress] = -np.inf
            if step == 0:
                scores[begin_suppress] = -np.inf
            token = int(np.argmax(scores))
            if token == eot:
                return ids, "eot"
            ids.append(token)
            if step + 1 < max_new_tokens:
                logits, past = self._next_step(hidden, token, past)
        return ids, "max_new_tokens"

    def _first_step(self, hidden: np.ndarray, prompt: list[int]):
        feeds = {"input_ids": np.asarray([prompt], dtype=np.int64), "encoder_hidden_states": hidden}
        if self.decoder_mode == "merged":
            feeds.update(self._empty_past())
            feeds["use_cache_branch"] = np.array([False])
        return self._run(self.decoder, feeds, keep_encoder=None)

    def _next_step(self, hidden: np.ndarray, token: int, past: dict):
        feeds = {"input_ids": np.asarray([[token]], dtype=np.int64), **past}
        if self.decoder_mode == "merged":
            feeds["encoder_hidden_states"] = hidden
            feeds["use_cache_branch"] = np.array([True])
        return self._run(self.decoder_with_past, feeds, keep_encoder=past)

    def _empty_past(self) -> dict:
        heads, head_dim = self._kv_shape
        empty = np.zeros((1, heads, 0, head_dim), dtype=np.float32)
        return {
            f"past_key_values.{layer}.{part}.{kv}": empty
            for layer in range(self.num_layers)
            for part in ("decoder", "encoder")
            for kv in ("key", "value")
        }

    def _run(self, session: ort.InferenceSession, feeds: dict, keep_encoder: dict | None):
        """Run one decoder step; map present.* outputs to the next step's past_key_values.*.

        The encoder (cross-attention) KV never changes after the first step, so it is taken from
        the first step's outputs (``keep_encoder``) rather than from the cached branch.
        """
        names = [o.name for o in session.get_outputs()]
        outputs = dict(zip(names, session.run(None, feeds)))  # noqa: B905 (boards: Python < 3.10)
        past = {}
        for name, value in outputs.items():
            if not name.startswith("present."):
                continue
            past_name = "past_key_values." + name[len("present.") :]
            if keep_encoder is not None and ".encoder." in name:
                continue
            past[past_name] = value
        if keep_encoder is not None:
            past.update({k: v for k, v in keep_encoder.items() if ".encoder." in k})
        return outputs["logits"], past


# --------------------------------------------------------------------------- CLI


def _parser() -> argparse.ArgumentParser:
    parser = shared.asr_parser("Benchmark Whisper ONNX on onnxruntime CPU.")
    parser.add_argument("--max-new-tokens", type=int, default=32)
    parser.add_argument("--language", default="en", help="language code, or 'none'")
    parser.add_argument("--task", default="transcribe", choices=["transcribe", "translate"])
    parser.add_argument("--decoder", default="auto", choices=["auto", "split", "merged"])
    return parser


def main(argv: list[str] | None = None) -> int:
    """CLI entry: print one JSON line per clip and repetition (warm-up rows flagged)."""
    args = _parser().parse_args(argv)
    language = None if args.language.lower() == "none" else args.language
    engine = OrtWhisper(args.model, threads=args.threads, decoder=args.decoder)
    for path in args.audio:
        audio = shared.load_clip(path)
        name = Path(path).name
        for warm, count in ((True, args.warmup), (False, args.repetitions)):
            for rep in range(count):
                result = engine.transcribe_ids(audio, args.max_new_tokens, language, args.task)
                print(json.dumps(shared.asr_row(name, rep, warm, result)), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
