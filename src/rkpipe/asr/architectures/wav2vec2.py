"""wav2vec2 with a CTC head, run by ``rkpipe.engines.ort_ctc`` (helpers: :mod:`rkpipe.asr.ctc`)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from rkpipe.asr.architectures.base import AsrArchitecture
from rkpipe.config.schema import AsrInitConfig, AsrRknnConfig

MODEL_FILE = "model.onnx"


class Wav2Vec2(AsrArchitecture):
    name = "wav2vec2"
    label = "wav2vec2 CTC"
    engine = "ort_ctc"
    engine_class = "OrtCtc"
    export_files = (MODEL_FILE,)
    quantized_files = (MODEL_FILE,)
    encoder_file = MODEL_FILE
    processor_files = (("preprocessor_config.json",), ("vocab.json",))

    def random_model(self, init: AsrInitConfig, seed: int) -> tuple[Any, Any, str]:
        from rkpipe.asr.ctc import build_ctc_processor, random_wav2vec2

        processor = build_ctc_processor()
        return random_wav2vec2(init, seed), processor, "wav2vec2-base-960h character vocabulary"

    def hub_classes(self) -> tuple[Any, Any]:
        from transformers import Wav2Vec2ForCTC, Wav2Vec2Processor

        return Wav2Vec2ForCTC, Wav2Vec2Processor

    def export(self, model_dir: Path, out: Path, random_weights: bool | None) -> None:
        from rkpipe.asr.ctc import run_ctc_export, write_ctc_engine_files

        run_ctc_export(model_dir, out)
        write_ctc_engine_files(model_dir, out, random_weights)

    def calibration_feeds(self, engine: Any, fp32_dir: Path, clips: list) -> dict[str, list]:
        return {MODEL_FILE: [{"input_values": engine.features(audio)} for _, audio, _ in clips]}

    def encoder_spec(self, fp32_dir: Path, info: dict, cfg: AsrRknnConfig) -> dict:
        samples = int(round(cfg.input_seconds * info["sampling_rate"]))
        return {"model": fp32_dir / MODEL_FILE, "input": "input_values", "shape": [1, samples]}

    def encoder_reference(self, engine: Any, x: Any) -> Any:
        return engine.session.run(None, {"input_values": x})[0]

    def decode_encoder_output(self, engine: Any, output: Any, decoding: dict) -> list[int]:
        from rkpipe.engines.ort_ctc import ctc_greedy

        return ctc_greedy(output, engine.blank_id)  # the "encoder" is the whole CTC model


WAV2VEC2 = Wav2Vec2()
