"""What every ASR architecture provides (see :mod:`rkpipe.asr.architectures`)."""

from __future__ import annotations

from abc import ABC, abstractmethod
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from rkpipe.config.schema import AsrInitConfig, AsrRknnConfig


class AsrArchitecture(ABC):
    """One model family: its name (the checkpoint's ``model_type``), the engine that runs its
    export, and the steps that differ between families."""

    name: str
    label: str  # how messages name it, e.g. "Whisper"
    engine: str  # the module of rkpipe.engines that runs the export
    engine_class: str  # the class in that module
    export_files: tuple[str, ...]  # the ONNX files the export writes
    quantized_files: tuple[str, ...]  # the ONNX files quantization rewrites
    encoder_file: str  # the ONNX file asr.quant.encoder_scheme applies to
    # Files a hub/local checkpoint must hold besides config.json and weights, for the processor
    # to load: one name of each group (acquisition checks them before transformers runs).
    processor_files: tuple[tuple[str, ...], ...] = ()

    @abstractmethod
    def random_model(self, init: AsrInitConfig, seed: int) -> tuple[Any, Any, str]:
        """(model, processor, what the tokenizer is) with seeded random weights, offline."""

    @abstractmethod
    def hub_classes(self) -> tuple[Any, Any]:
        """The transformers (model, processor) classes that load a checkpoint of the family."""

    @abstractmethod
    def export(self, model_dir: Path, out: Path, random_weights: bool | None) -> None:
        """Export the checkpoint in ``model_dir`` to fp32 ONNX plus ``engine.json`` in ``out``."""

    @abstractmethod
    def calibration_feeds(self, engine: Any, fp32_dir: Path, clips: list) -> dict[str, list]:
        """``{onnx file: [feed dict, ...]}`` static quantization calibrates each file on."""

    @abstractmethod
    def encoder_spec(self, fp32_dir: Path, info: dict, cfg: AsrRknnConfig) -> dict:
        """``{"model", "input", "shape"}`` of the encoder rknn-toolkit2 converts (static)."""

    @abstractmethod
    def encoder_reference(self, engine: Any, x: Any) -> Any:
        """The fp32 onnxruntime encoder output for ``x`` (what the simulator is compared with)."""

    @abstractmethod
    def decode_encoder_output(self, engine: Any, output: Any, decoding: dict) -> list[int]:
        """Token ids from an encoder output (the simulator's or onnxruntime's), decoded by the
        fp32 ``engine``; ``decoding`` holds ``max_new_tokens``, ``language`` and ``task``."""
