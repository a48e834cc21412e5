"""``genai_int4`` / ``genai_int8`` / ``genai_gguf_exact``: onnxruntime-genai's fused builder
graph, built in its own interpreter (:mod:`rkpipe.backends.ort.genai`); ``genai_gguf_exact``
then swaps in the GGUF's own blocks."""

from __future__ import annotations

import shutil
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from rkpipe.backends.ort.schemes import register
from rkpipe.backends.ort.schemes.base import OrtScheme, SchemeJob
from rkpipe.backends.ort.schemes.gguf_exact import apply_blocks, gguf_params
from rkpipe.backends.ort.schemes.matmul_nbits import nbits_params

if TYPE_CHECKING:
    from rkpipe.config.schema import OrtQuantConfig


@dataclass(frozen=True)
class GenaiBuilder(OrtScheme):
    precision: str = "fp32"  # the builder's -p

    def run(self, job: SchemeJob) -> dict[str, Any]:
        import onnx

        from rkpipe.backends.ort import genai
        from rkpipe.backends.ort.gguf_exact import gguf_path_from_manifest
        from rkpipe.backends.ort.graph import save_model, split_decode
        from rkpipe.llm.export import ONNX_MODEL_FILE

        cfg, tmp = job.cfg, job.out_dir
        python = genai.genai_python(cfg.genai_python)
        # fail on a non-GGUF source before building
        gguf_path = gguf_path_from_manifest(job.request.float_model_dir) if self.gguf else None
        facts: dict[str, Any] = {}
        work = tmp / ".genai_build"
        built, facts["builder_s"] = genai.build_genai(
            python, job.request.float_model_dir, work, self.precision, cfg.block_size,
            cfg.accuracy_level,
        )  # fmt: skip
        model = onnx.load(str(built / ONNX_MODEL_FILE), load_external_data=True)
        if gguf_path is not None:
            facts.update(apply_blocks(model, gguf_path, cfg))
        facts.update(split_decode(model, cfg))
        save_model(model, tmp / ONNX_MODEL_FILE)
        if (built / "genai_config.json").is_file():
            shutil.copy2(built / "genai_config.json", tmp / "genai_config.json")
        shutil.move(str(work / genai.BUILDER_LOG), str(tmp / genai.BUILDER_LOG))
        shutil.rmtree(work, ignore_errors=True)
        return facts

    def params(self, cfg: OrtQuantConfig, dtype: str, facts: dict[str, Any]) -> dict[str, str]:
        return gguf_params(self, cfg, facts) if self.gguf else nbits_params(cfg, dtype)


register(GenaiBuilder("genai_int4", ("int4",), "genai builder", block=True, needs_export=False,
                      precision="int4"))  # fmt: skip
register(GenaiBuilder("genai_int8", ("int8",), "genai builder", block=True, needs_export=False,
                      precision="int8"))  # fmt: skip
register(GenaiBuilder("genai_gguf_exact", ("int4",), "genai builder + GGUF blocks", block=True,
                      gguf=True, needs_export=False))  # fmt: skip
