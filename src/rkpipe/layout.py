"""Where every stage output lives, derived from ``paths`` (``conf/paths``).

:class:`Layout` is the one place the library, the stages and the benchmarks spell the
``models/llm/quantized``-style layout; ``dvc.yaml`` is the other (DVC needs the paths
literally), and ``tests/unit/test_layout.py`` checks that the two agree.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from rkpipe.hostinfo import board_file, host_file

DETAILS_DIR = "details"  # under paths.metrics_dir: each stage's full figures


class PathsLike(Protocol):
    """The four roots of ``conf/paths`` (:class:`rkpipe.config.schema.PathsConfig`)."""

    data_dir: str
    models_dir: str
    metrics_dir: str
    reports_dir: str


@dataclass(frozen=True)
class ModelLayout:
    """The stages' outputs for one model kind (``models/llm`` or ``models/asr``)."""

    root: Path

    @property
    def float(self) -> Path:
        """The acquired checkpoint (download stage)."""
        return self.root / "float"

    @property
    def onnx_fp32(self) -> Path:
        """The fp32 ONNX export (export stage)."""
        return self.root / "onnx_fp32"

    @property
    def quantized(self) -> Path:
        """The quantized model and its ``quant_manifest.json`` (quantize stage)."""
        return self.root / "quantized"


@dataclass(frozen=True)
class Layout:
    """Every stage output under the four ``paths`` roots."""

    data: Path
    models: Path
    metrics: Path
    reports: Path

    @classmethod
    def from_paths(cls, paths: PathsLike, root: Path | str = ".") -> Layout:
        """The layout of ``paths``, under ``root`` (the workspace; paths are relative)."""
        base = Path(root)
        return cls(
            data=base / paths.data_dir,
            models=base / paths.models_dir,
            metrics=base / paths.metrics_dir,
            reports=base / paths.reports_dir,
        )

    @property
    def llm(self) -> ModelLayout:
        return ModelLayout(self.models / "llm")

    @property
    def asr(self) -> ModelLayout:
        return ModelLayout(self.models / "asr")

    @property
    def calibration(self) -> Path:
        """The calibration JSON (calibrate stage)."""
        return self.data / "calib" / "calibration.json"

    @property
    def asr_testset(self) -> Path:
        """The synthesized test clips and their transcripts (asr_testset stage)."""
        return self.data / "asr" / "testset"

    @property
    def reference_logits(self) -> Path:
        """The float model's logits on the evaluation text (reference_logits stage)."""
        return self.data / "eval" / "reference_logits.npz"

    @property
    def host_fingerprint(self) -> Path:
        """This host's facts (host_fingerprint stage)."""
        return host_file(self.data)

    @property
    def board_fingerprint(self) -> Path:
        """The board's facts (host_fingerprint stage)."""
        return board_file(self.data)

    @property
    def preflight_verdict(self) -> Path:
        """The preflight stage's verdict: every other stage depends on it, so runs after it."""
        return self.data / "preflight" / "passed.json"

    def source_fingerprint(self, model: str) -> Path:
        """The stat fingerprint of a local ``llm`` or ``asr`` source (preflight stage)."""
        return self.data / "preflight" / f"{model}_source.json"

    def metrics_file(self, name: str) -> Path:
        """``<metrics>/<name>.json`` (a stage's headline metrics; deploy_bench's is ``bench``)."""
        return self.metrics / f"{name}.json"

    def metrics_details(self, name: str) -> Path:
        """``<metrics>/details/<name>.json``: every figure of a stage (rkpipe.measure.figures)."""
        return self.metrics / DETAILS_DIR / f"{name}.json"

    @property
    def report(self) -> Path:
        return self.reports / "report.md"

    @property
    def bench_llm_samples(self) -> Path:
        return self.reports / "bench_llm_samples.json"

    @property
    def bench_asr_samples(self) -> Path:
        return self.reports / "bench_asr_samples.json"

    @property
    def output_record(self) -> Path:
        """The sha256 of every declared output (record stage)."""
        return self.reports / "outputs.sha256.json"
