"""Typed configuration of the pipeline.

The dataclasses are not frozen because OmegaConf makes a frozen structured
config read-only, which Hydra cannot merge group files onto; stages treat them
as values and derive changed copies with ``dataclasses.replace``.

Every Hydra config group under ``conf/`` is backed by one dataclass here. The
top-level :class:`PipelineConfig` is registered in Hydra's ConfigStore (see
:func:`rkpipe.config.registration.register_configs`), so composition already type-checks each
value; the cross-field rules (platform matrix, ranges) live in :mod:`rkpipe.config.validate`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from rkpipe.layout import Layout


@dataclass
class PathsConfig:
    """Where stages read and write, relative to the repository root."""

    data_dir: str = "data"
    models_dir: str = "models"
    metrics_dir: str = "metrics"
    reports_dir: str = "reports"


@dataclass
class ModelConfig:
    """The LLM to acquire.

    ``source`` is one of ``package`` (weights shipped in a Python package),
    ``hub`` (Hugging Face hub), ``local`` (a directory) or ``gguf`` (a GGUF file,
    local or on the hub).
    """

    name: str = "smollm2-135m-instruct"
    source: str = "package"
    repo_id: str | None = None
    revision: str = "main"
    # The commit ``revision`` resolved to when params.yaml was composed (rkpipe.hub.pin_revision):
    # a moving branch that gets a new upstream commit changes params, so DVC reruns the download.
    commit: str | None = None
    path: str | None = None
    package: str | None = None
    gguf_file: str | None = None
    allow_patterns: list[str] = field(default_factory=list)
    trust_remote_code: bool = False
    dtype: str = "float32"
    # What the "float" reference really is (e.g. weights de-quantized from Q4_1).
    float_note: str = ""


@dataclass
class AsrQuantConfig:
    """onnxruntime quantization of the ASR model (the seed's scheme by default).

    ``scheme``: ``dynamic`` (``quantize_dynamic``: MatMul -> MatMulInteger, ``weight_type``,
    ``per_channel``, ``op_types``), ``static_qdq`` (``quantize_static`` in QDQ format with
    ``activation_type`` activations calibrated by ``calibrate_method`` on ``calib_clips``
    synthesized clips of ``calib_sentences``, never the eval clips) or ``matmul_nbits4``
    (4-bit block-wise MatMulNBits, ``block_size``, ``symmetric``, ``accuracy_level``).
    ``encoder_scheme`` overrides the scheme of the encoder file (Whisper's
    ``encoder_model.onnx``, wav2vec2's whole ``model.onnx``); null means ``scheme``.
    ``tie_embedding``: the int8 schemes let Whisper's embedding lookup read the int8 LM-head
    weight instead of keeping the fp32 table (see :mod:`rkpipe.asr.tie`).
    """

    scheme: str = "dynamic"
    weight_type: str = "QInt8"
    op_types: list[str] = field(default_factory=lambda: ["MatMul"])
    per_channel: bool = False
    encoder_scheme: str | None = None
    activation_type: str = "QUInt8"
    calibrate_method: str = "MinMax"
    calib_sentences: str | None = None
    calib_clips: int = 8
    block_size: int = 32
    symmetric: bool = True
    accuracy_level: int = 0
    tie_embedding: bool = True


@dataclass
class AsrInitConfig:
    """Architecture of a randomly initialised ASR model (offline default only).

    Whisper reads every field but the ``conv_*`` ones; wav2vec2 maps ``d_model`` to
    ``hidden_size``, ``encoder_layers`` to ``num_hidden_layers``, ``ffn_dim`` to
    ``intermediate_size`` and uses ``conv_dim`` (all 7 feature-extractor convolutions),
    ``conv_pos_kernel`` / ``conv_pos_groups`` (positional convolution); its ``vocab_size``
    must be the character vocabulary's size (32).
    """

    d_model: int = 64
    encoder_layers: int = 2
    decoder_layers: int = 2
    attention_heads: int = 2
    ffn_dim: int = 256
    num_mel_bins: int = 80
    vocab_size: int = 51865
    max_source_positions: int = 1500
    max_target_positions: int = 448
    conv_dim: int = 512
    conv_pos_kernel: int = 128
    conv_pos_groups: int = 16


@dataclass
class AsrRknnConfig:
    """``asr.backend=rknn``: the encoder converted by rknn-toolkit2 in its own interpreter.

    ``python``: that interpreter (else ``$RKPIPE_RKNN_PYTHON``, else ``.venv-rknn/bin/python``
    made by ``scripts/setup_rknn.sh``). ``do_quantization`` gives ``quantized_dtype`` (w8a8,
    calibrated on ``calib_clips`` synthesized clips), else the NPU's fp16. ``simulate`` runs
    the converted model in the toolkit's x86 simulator against the ONNX encoder.
    ``input_seconds``: the static input length of a CTC model (Whisper's is always 30 s).
    """

    target_platform: str = "rk3588"
    do_quantization: bool = False
    quantized_dtype: str = "w8a8"
    quantized_algorithm: str = "normal"
    optimization_level: int = 3
    python: str | None = None
    calib_clips: int = 4
    simulate: bool = True
    input_seconds: float = 20.0


@dataclass
class AsrConfig:
    """The speech model: ``architecture`` ``whisper`` or ``wav2vec2`` (CTC); ``source`` is
    ``random_init``, ``hub`` or ``local``; ``backend`` ``onnxruntime`` or ``rknn`` (the encoder
    also converted for the NPU, see :class:`AsrRknnConfig`)."""

    name: str = "whisper-tiny-random"
    architecture: str = "whisper"
    source: str = "random_init"
    repo_id: str | None = None
    revision: str = "main"
    commit: str | None = None
    path: str | None = None
    seed: int = 0
    init: AsrInitConfig = field(default_factory=AsrInitConfig)
    random_weights: bool = True
    language: str | None = "en"
    task: str = "transcribe"
    max_new_tokens: int = 64
    eval_sentences: str = "data/asr/sentences.txt"
    quant: AsrQuantConfig = field(default_factory=AsrQuantConfig)
    backend: str = "onnxruntime"
    rknn: AsrRknnConfig = field(default_factory=AsrRknnConfig)


@dataclass
class CalibConfig:
    """Calibration data for quantization.

    ``source``: ``prompts`` (a text file of prompts, one per line), ``dataset``
    (a Hugging Face ``datasets`` source) or ``json`` (a ready calibration file).
    """

    source: str = "prompts"
    prompts_file: str = "data/calib/prompts.txt"
    json_file: str | None = None
    dataset: str | None = None
    dataset_config: str | None = None
    split: str = "train"
    input_column: str = "text"
    target_column: str | None = None
    num_samples: int = 64
    max_input_tokens: int = 256
    max_new_tokens: int = 48
    batch_size: int = 16
    apply_chat_template: bool = True
    seed: int = 0


@dataclass
class OrtQuantConfig:
    """onnxruntime LLM quantization options.

    ``scheme`` (with ``quant.dtype``): ``dynamic`` (int8 MatMulInteger; int4 means
    ``matmul_nbits``), ``matmul_nbits`` (int4/int8 weight-only), ``static_qdq`` (int8, calibrated
    on ``calib_records`` records of the calibration set), ``gguf_exact`` (the GGUF's own blocks,
    lossless; GGUF/package sources only), ``genai_int4`` / ``genai_int8`` / ``genai_gguf_exact``
    (onnxruntime-genai's fused builder graph, built with the interpreter ``genai_python``).
    ``embedding_bits`` 4 or 8 block-quantizes the token embedding and the tied lm_head into one
    shared table (0 leaves them to the scheme). ``accuracy_level`` applies to 4-bit MatMulNBits
    (0/1: fp32 compute, lossless; 4: int8 activations, faster), ``accuracy_level_8bit`` to the
    8-bit ones this backend writes itself. ``q4_1_mode`` (GGUF schemes): ``residual`` (exact),
    ``folded`` or ``mse`` (see :mod:`rkpipe.backends.ort.gguf_exact`). ``decode_accuracy_level``
    (GGUF and genai schemes) gives one-token steps their own level (see
    :func:`rkpipe.backends.ort.decode_split.split_decode_branch`).
    """

    scheme: str = "dynamic"
    weight_type: str = "QInt8"
    per_channel: bool = False
    op_types: list[str] = field(default_factory=lambda: ["MatMul"])
    block_size: int = 32
    accuracy_level: int = 0
    # 8-bit MatMulNBits (Q8_0 or 8-bit embedding+lm_head): level 0 is a slow fp32 path in ORT 1.32
    accuracy_level_8bit: int = 4
    embedding_bits: int = 0
    activation_type: str = "QUInt8"
    calibrate_method: str = "MinMax"
    calib_records: int = 8
    calib_max_tokens: int = 256
    genai_python: str | None = None
    # GGUF schemes: how Q4_1 offsets are carried (residual: exact side branch; folded: 4-bit
    # extra K blocks of the same MatMulNBits; mse: none, re-encoded blocks)
    q4_1_mode: str = "residual"
    # genai_* / gguf_exact: 4-bit MatMulNBits accuracy level of one-token (decode) steps, in an
    # If branch beside the prefill graph (None: one graph for both)
    decode_accuracy_level: int | None = None
    # dynamic / static_qdq int8: quantize weights to 7 bits so that u8 x s8 products cannot
    # saturate AVX2's 16-bit vpmaddubsw on x86 without VNNI. auto: on for per-channel QInt8
    # weights (see rkpipe.backends.ort.reduce_range); true / false force it.
    reduce_range: str = "auto"


@dataclass
class RkllmQuantConfig:
    """Options only the rkllm-toolkit backend reads."""

    python: str | None = None
    device: str = "cpu"
    load_dtype: str = "float32"
    extra_qparams: dict[str, Any] | None = None


@dataclass
class QuantConfig:
    """How the LLM is quantized. ``backend`` picks an entry of the backend registry.

    For ``rkllm`` the dtype is a toolkit ``quantized_dtype`` (``w8a8``, ``w4a16_g128`` ...),
    checked against the platform matrix; for ``onnxruntime`` it is ``int8`` or ``int4``.
    """

    backend: str = "onnxruntime"
    dtype: str = "int8"
    algorithm: str = "normal"
    optimization_level: int = 1
    num_npu_core: int | None = None
    hybrid_rate: float = 0.0
    max_context: int = 4096
    ort: OrtQuantConfig = field(default_factory=OrtQuantConfig)
    rkllm: RkllmQuantConfig = field(default_factory=RkllmQuantConfig)


@dataclass
class PlatformConfig:
    """The target SoC; ``host`` means the machine running the pipeline."""

    name: str = "host"


@dataclass
class BoardConfig:
    """Where ``deploy_bench`` runs. ``local`` runs the benchmark runner on this host."""

    name: str = "local"
    transport: str = "local"
    host: str | None = None
    port: int = 22
    user: str | None = None
    key_file: str | None = None
    known_hosts: str | None = None
    workdir: str = "/tmp/rkpipe-board"
    platform: str | None = None
    python: str = "python3"
    # Rockchip's runtime as the board sees it (its docs install it in /usr/lib). An .rkllm
    # variant is benchmarked by rkllm_runner through it; on board=local a missing file means
    # "no NPU here" and the LLM benchmark is skipped rather than failed.
    rkllm_lib: str = "/usr/lib/librkllmrt.so"
    # Prefix for /proc and /sys reads: "" on a real board, a directory on the loopback test board.
    root: str = ""
    pin_frequency: bool = False
    timeout_s: float = 600.0


@dataclass
class BenchConfig:
    """Benchmark methodology (Rockchip's and llama-bench's defaults)."""

    prompt_tokens: int = 128
    new_tokens: int = 64
    warmup: int = 2
    repetitions: int = 5
    threads: int = 2


@dataclass
class EvalConfig:
    """Host accuracy evaluation of the LLM."""

    text_file: str = "data/eval/eval.txt"
    seqlen: int = 512
    threads: int = 2
    # A numerically broken LLM (NaN, PPL > 10x float, top-1 < 0.2) fails evaluate; true keeps
    # its figures, flagged llm_broken=1 and tagged gate=broken (rkpipe.evaluate.sanity).
    keep_broken: bool = False


@dataclass
class TrackingConfig:
    """MLflow settings. ``uri: null`` means the project's SQLite store (see tracking)."""

    uri: str | None = None
    experiment: str = "rkpipe"
    enabled: bool = True


@dataclass
class GateRule:
    """One acceptance gate on a variant's own metric: ``min <= metrics[metric] <= max``."""

    metric: str = "ppl_delta_pct"
    max: float | None = None
    min: float | None = None
    description: str = ""


@dataclass
class GatesConfig:
    """Acceptance gates ``rkpipe compare`` and sweeps apply; a variant failing one is tagged
    ``gate=failed`` in MLflow. They judge results, so they are not part of a variant's id."""

    enabled: bool = True
    rules: dict[str, GateRule] = field(default_factory=dict)


@dataclass
class PipelineConfig:
    """The whole resolved configuration, i.e. what ``params.yaml`` holds."""

    paths: PathsConfig = field(default_factory=PathsConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    asr: AsrConfig = field(default_factory=AsrConfig)
    calib: CalibConfig = field(default_factory=CalibConfig)
    quant: QuantConfig = field(default_factory=QuantConfig)
    platform: PlatformConfig = field(default_factory=PlatformConfig)
    board: BoardConfig = field(default_factory=BoardConfig)
    bench: BenchConfig = field(default_factory=BenchConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    tracking: TrackingConfig = field(default_factory=TrackingConfig)
    gates: GatesConfig = field(default_factory=GatesConfig)

    @property
    def layout(self) -> Layout:
        """Where every stage output lives (:class:`rkpipe.layout.Layout` of ``paths``)."""
        return Layout.from_paths(self.paths)


SCHEMA_NAME = "rkpipe_schema"
