"""faster-whisper's CTranslate2 Whisper on clips, one JSON row per clip (the peer of
``python -m rkpipe.engines.ort_whisper`` in ``benchmarks/asr_host.py``).

It runs exactly what ``faster_whisper.WhisperModel.transcribe`` runs for one clip shorter than
30 s with ``beam_size=1``, ``temperature=0``, ``without_timestamps=True``: faster-whisper's
feature extractor (its 160-sample padding, the last frame dropped, padded to 3000 frames), then
``ctranslate2.models.Whisper.encode`` and ``.generate``. Calling the two halves directly times
the encoder and the decoder apart. The prompt and the suppressed tokens come from the command
line, so both engines decode with the same settings. ``--front-end rkpipe`` replaces
faster-whisper's feature extractor with rkpipe's (Whisper's recipe: the audio padded to 30 s
before the STFT, as the Hugging Face and OpenAI extractors do; faster-whisper pads the features
instead), so that only the model differs from rkpipe's fp32 ONNX: the conversion check.

    python benchmarks/asr_peer.py --model DIR --compute-type int8 --threads 2 \
        --prompt 50257 50362 --suppress 1 2 ... --audio a.wav b.wav
"""

from __future__ import annotations

import argparse
import json
import sys
import time

from rkpipe.engines.engine_shared import SAMPLE_RATE, load_clip, peak_rss_mb


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", required=True, help="a CTranslate2 Whisper model directory")
    parser.add_argument("--compute-type", default="float32", help="float32, int8, ...")
    parser.add_argument("--threads", type=int, default=2, help="CTranslate2 intra-op threads")
    parser.add_argument("--max-new-tokens", type=int, default=96)
    parser.add_argument("--prompt", type=int, nargs="+", required=True, help="decoder prompt ids")
    parser.add_argument("--suppress", type=int, nargs="*", default=[], help="ids never emitted")
    parser.add_argument(
        "--front-end",
        choices=["faster-whisper", "rkpipe"],
        default="faster-whisper",
        help="whose log-mel features",
    )
    parser.add_argument(
        "--export",
        help="rkpipe's fp32 export (engine.json, mel_filters.npy), for --front-end rkpipe",
    )
    parser.add_argument("--warmup", type=int, default=1, help="untimed runs of the first clip")
    parser.add_argument("--audio", nargs="+", required=True, help="16 kHz mono WAV files")
    return parser


def _rkpipe_front_end(export: str | None):
    """rkpipe's log-mel function for the export's ``engine.json`` and ``mel_filters.npy``."""
    from pathlib import Path

    import numpy as np

    from rkpipe.engines.ort_whisper import log_mel_spectrogram

    if not export:
        sys.exit("--front-end rkpipe needs --export (rkpipe's fp32 Whisper export)")
    info = json.loads((Path(export) / "engine.json").read_text(encoding="utf-8"))
    filters = np.load(Path(export) / "mel_filters.npy")
    keys = ("n_fft", "hop_length", "n_samples")
    return lambda audio: log_mel_spectrogram(audio, filters, **{k: int(info[k]) for k in keys})


def main(argv: list[str] | None = None) -> int:
    """Transcribe every clip; print one JSON line each (ids, features/encoder/decoder/total ms,
    audio seconds, the process's peak RSS so far)."""
    args = _parser().parse_args(argv)
    import ctranslate2
    import numpy as np
    from faster_whisper import WhisperModel
    from faster_whisper.audio import pad_or_trim

    model = WhisperModel(
        args.model, device="cpu", compute_type=args.compute_type, cpu_threads=args.threads
    )
    rkpipe_features = _rkpipe_front_end(args.export) if args.front_end == "rkpipe" else None

    def transcribe(audio) -> dict:
        start = time.perf_counter()
        if rkpipe_features is not None:
            segment = rkpipe_features(audio)
        else:
            features = model.feature_extractor(audio)
            segment = pad_or_trim(features[:, : features.shape[-1] - 1])
        t_features = time.perf_counter()
        batch = np.ascontiguousarray(segment[None], dtype=np.float32)
        hidden = model.model.encode(ctranslate2.StorageView.from_array(batch))
        t_encoder = time.perf_counter()
        result = model.model.generate(
            hidden,
            [args.prompt],
            beam_size=1,
            max_length=len(args.prompt) + args.max_new_tokens,
            suppress_blank=True,
            suppress_tokens=args.suppress,
        )[0]
        end = time.perf_counter()
        return {
            "ids": list(result.sequences_ids[0]),
            "features_ms": (t_features - start) * 1e3,
            "encoder_ms": (t_encoder - t_features) * 1e3,
            "decoder_ms": (end - t_encoder) * 1e3,
            "total_ms": (end - start) * 1e3,
            "audio_s": len(audio) / SAMPLE_RATE,
        }

    clips = [(path, load_clip(path)) for path in args.audio]
    for _ in range(args.warmup):
        transcribe(clips[0][1])
    for path, audio in clips:
        row = {"clip": path, "warmup": False} | transcribe(audio)
        print(json.dumps(row | {"peak_rss_mb": peak_rss_mb()}), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
