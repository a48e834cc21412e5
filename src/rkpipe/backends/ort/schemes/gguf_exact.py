"""``gguf_exact``: the source GGUF's own Q4_0/Q4_1/Q8_0 blocks carried losslessly into
MatMulNBits (the block encoding is in :mod:`rkpipe.backends.ort.gguf_exact`)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from rkpipe.backends.ort.schemes import register
from rkpipe.backends.ort.schemes.base import OrtScheme, SchemeJob

if TYPE_CHECKING:
    from rkpipe.config.schema import OrtQuantConfig


def gguf_params(scheme: OrtScheme, cfg: OrtQuantConfig, facts: dict[str, Any]) -> dict[str, str]:
    """The params of a scheme that carries the GGUF's blocks (their size is the GGUF's)."""
    return {
        "gguf_file": str(facts.get("gguf_file", "")),
        "block_size": str(scheme.block_size(cfg.block_size)),
        "q4_1_mode": cfg.q4_1_mode,
    }


def apply_blocks(model: Any, gguf_path: Any, cfg: OrtQuantConfig) -> dict[str, Any]:
    """Put the GGUF's blocks into ``model`` in place; return the match report's facts."""
    from rkpipe.backends.ort.gguf_exact import apply_gguf_exact, load_gguf_weights

    report = apply_gguf_exact(
        model,
        load_gguf_weights(gguf_path),
        cfg.accuracy_level,
        cfg.accuracy_level_8bit,
        cfg.q4_1_mode,
        cfg.embedding_bits,
    )
    return {**report.as_dict(), "gguf_file": gguf_path.name}


@dataclass(frozen=True)
class GgufExact(OrtScheme):
    def run(self, job: SchemeJob) -> dict[str, Any]:
        import onnx

        from rkpipe.backends.ort.gguf_exact import gguf_path_from_manifest
        from rkpipe.backends.ort.graph import save_model, split_decode
        from rkpipe.llm.export import ONNX_MODEL_FILE

        path = gguf_path_from_manifest(job.request.float_model_dir)
        model = onnx.load(str(job.src), load_external_data=True)
        facts = apply_blocks(model, path, job.cfg)
        facts.update(split_decode(model, job.cfg))
        save_model(model, job.out_dir / ONNX_MODEL_FILE)
        return facts

    def params(self, cfg: OrtQuantConfig, dtype: str, facts: dict[str, Any]) -> dict[str, str]:
        return gguf_params(self, cfg, facts)


register(GgufExact("gguf_exact", ("int4",), "GGUF blocks", block=True, gguf=True))
