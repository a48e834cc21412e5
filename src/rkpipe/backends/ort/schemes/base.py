"""What every onnxruntime scheme is: its dtypes, label, params and ``run``."""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from rkpipe.backends.base import QuantizeRequest
    from rkpipe.config.schema import OrtQuantConfig

# How the GGUF schemes carry a Q4_1 block's offset (see rkpipe.backends.ort.gguf_exact).
Q4_1_MODES = ("residual", "folded", "mse")
# quant.ort.embedding_bits: 0 leaves the embedding/lm_head to the scheme.
EMBEDDING_BITS = (0, 4, 8)
GGUF_BLOCK_SIZE = 32  # Q4_0 / Q4_1 / Q8_0 blocks


@dataclass(frozen=True)
class SchemeJob:
    """One run of a scheme: the request, the fp32 export (None for builder schemes) and the
    directory to write ``model.onnx`` (and any file of its own) into."""

    request: QuantizeRequest
    src: Path | None
    out_dir: Path

    @property
    def cfg(self) -> OrtQuantConfig:
        return self.request.quant.ort

    @property
    def dtype(self) -> str:
        return self.request.quant.dtype


@dataclass(frozen=True)
class OrtScheme:
    """One scheme, as the rest of rkpipe sees it.

    ``dtypes``: the ``quant.dtype`` values it takes; ``label``: how tables name it; ``block``:
    block-quantized (tables show block size and accuracy level, params record the accuracy
    level); ``gguf``: carries the source GGUF's own blocks (needs a GGUF model; the block size
    is the GGUF's, not the config's); ``needs_export``: starts from the fp32 ONNX export (the
    genai builder schemes build their own graph from the float model).
    """

    name: str
    dtypes: tuple[str, ...]
    label: str
    block: bool = False
    gguf: bool = False
    needs_export: bool = True

    def block_size(self, configured: int) -> int:
        """The block size the scheme really uses (the GGUF's own for GGUF schemes)."""
        return GGUF_BLOCK_SIZE if self.gguf else configured

    def runs_as(self, dtype: str) -> str:
        """The scheme that really runs for ``dtype`` (a legacy spelling may alias another)."""
        return self.name

    def run(self, job: SchemeJob) -> dict[str, Any]:
        """Write ``job.out_dir/model.onnx``; return the facts worth recording (manifest facts,
        and metrics for the numeric ones). A scheme registered for its label alone (a run of a
        since-removed scheme in compare) cannot run."""
        raise NotImplementedError(f"scheme {self.name!r} has no run()")

    def params(self, cfg: OrtQuantConfig, dtype: str, facts: dict[str, Any]) -> dict[str, str]:
        """The settings this scheme used, as MLflow params (strings); the backend adds the
        common ones (backend, dtype, scheme, op types, embedding bits, accuracy levels)."""
        return {}


@dataclass(frozen=True)
class PreparedGraphScheme(OrtScheme, ABC):
    """A scheme that runs an onnxruntime quantizer on the prepared fp32 export.

    Preparation, shared by all of them: the tied embedding/lm_head is block-quantized first
    when ``quant.ort.embedding_bits`` asks for it, weights reached through a ``Transpose`` of an
    initializer (optimum's tied lm_head) are folded into a transposed copy so the quantizer,
    which only sees initializer B inputs, quantizes them too, and past 2 GB the quantizer gets
    a file instead of a ModelProto.
    """

    def run(self, job: SchemeJob) -> dict[str, Any]:
        import tempfile

        import onnx

        from rkpipe.backends.ort.embedding import quantize_tied_embedding
        from rkpipe.backends.ort.graph import (
            PROTOBUF_LIMIT,
            fold_weight_transposes,
            quiet_quantizer_logs,
        )
        from rkpipe.io import dir_size_mb
        from rkpipe.llm.export import ONNX_MODEL_FILE

        assert job.src is not None, f"{self.name} starts from the fp32 export"
        cfg, dst = job.cfg, job.out_dir / ONNX_MODEL_FILE
        large = dir_size_mb(job.src) * 1e6 > PROTOBUF_LIMIT
        model = onnx.load(str(job.src), load_external_data=True)
        facts: dict[str, Any] = {}
        if cfg.embedding_bits:
            facts.update(
                quantize_tied_embedding(
                    model,
                    cfg.embedding_bits,
                    cfg.block_size,
                    cfg.accuracy_level,
                    cfg.accuracy_level_8bit,
                )
            )
        facts["folded_weight_transposes"] = fold_weight_transposes(model)
        state = self.inspect(job, model)
        with tempfile.TemporaryDirectory(prefix=".prep.", dir=dst.parent.parent) as work:
            source: Any = model
            if large:  # a >2 GB ModelProto cannot be serialised: hand the quantizer a file
                source = Path(work) / "prepared.onnx"
                onnx.save(model, str(source), save_as_external_data=True, location="prepared.data")
            del model
            with quiet_quantizer_logs():
                facts.update(self.quantize(source, dst, job, large, state))
        return facts

    def inspect(self, job: SchemeJob, model: Any) -> Any:
        """What the quantizer needs from the prepared graph (read before it is handed over)."""
        return None

    @abstractmethod
    def quantize(
        self, source: Any, dst: Path, job: SchemeJob, large: bool, state: Any
    ) -> dict[str, Any]:
        """Quantize ``source`` (a ModelProto, or a file when ``large``) into ``dst``."""
