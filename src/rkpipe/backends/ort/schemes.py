"""The onnxruntime backend's quantization schemes: one registry entry per scheme.

This is the one table of the schemes (``quant.ort.scheme``): the config validator, the backend's
dispatch and params, and the report and ``rkpipe compare`` labels all read it, so a scheme is
added here (and in the module that runs it) and nowhere else. It imports nothing heavy: the
validator reads it before any model is touched.
"""

from __future__ import annotations

from dataclasses import dataclass

from rkpipe.errors import ConfigError

# How the GGUF schemes carry a Q4_1 block's offset (see rkpipe.backends.ort.gguf_exact).
Q4_1_MODES = ("residual", "folded", "mse")
# quant.ort.embedding_bits: 0 leaves the embedding/lm_head to the scheme.
EMBEDDING_BITS = (0, 4, 8)
GGUF_BLOCK_SIZE = 32  # Q4_0 / Q4_1 / Q8_0 blocks


@dataclass(frozen=True)
class OrtScheme:
    """What the rest of rkpipe needs to know about one scheme.

    ``dtypes``: the ``quant.dtype`` values it takes; ``label``: how tables name it; ``block``:
    block-quantized (tables show block size and accuracy level); ``gguf``: carries the source
    GGUF's own blocks (needs a GGUF model; the block size is the GGUF's, not the config's);
    ``genai``: built by onnxruntime-genai's builder in its own interpreter (no fp32 export
    needed); ``builder_precision``: the builder's ``-p`` value for a genai scheme.
    """

    name: str
    dtypes: tuple[str, ...]
    label: str
    block: bool = False
    gguf: bool = False
    genai: bool = False
    builder_precision: str | None = None

    def block_size(self, configured: int) -> int:
        """The block size the scheme really uses (the GGUF's own for GGUF schemes)."""
        return GGUF_BLOCK_SIZE if self.gguf else configured


SCHEMES: dict[str, OrtScheme] = {}


def register(scheme: OrtScheme) -> OrtScheme:
    """Add ``scheme`` to the registry (replacing an entry of the same name)."""
    SCHEMES[scheme.name] = scheme
    return scheme


def get_scheme(name: str) -> OrtScheme:
    """The registered scheme ``name``.

    Raises:
        ConfigError: not registered; names the registered schemes.
    """
    if name not in SCHEMES:
        raise ConfigError(
            f"quant.ort.scheme={name!r} is not supported; allowed: {', '.join(SCHEMES)}"
        )
    return SCHEMES[name]


register(OrtScheme("dynamic", ("int8", "int4"), "dynamic"))  # int4: legacy matmul_nbits
register(OrtScheme("matmul_nbits", ("int4", "int8"), "MatMulNBits", block=True))
register(OrtScheme("static_qdq", ("int8",), "static QDQ"))
register(OrtScheme("gguf_exact", ("int4",), "GGUF blocks", block=True, gguf=True))
register(OrtScheme("genai_int4", ("int4",), "genai builder", block=True, genai=True,
                   builder_precision="int4"))  # fmt: skip
register(OrtScheme("genai_int8", ("int8",), "genai builder", block=True, genai=True,
                   builder_precision="int8"))  # fmt: skip
register(OrtScheme("genai_gguf_exact", ("int4",), "genai builder + GGUF blocks", block=True,
                   gguf=True, genai=True, builder_precision="fp32"))  # fmt: skip
