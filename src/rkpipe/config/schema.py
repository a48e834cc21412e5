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

from rkpipe.asr.testset import DEFAULT_VARIANTS
from rkpipe.config.domain import (
    Flag,
    Free,
    Int,
    Items,
    LocalPath,
    Number,
    OneOf,
    Text,
    Uri,
    typed,
)
from rkpipe.config.platforms import RKLLM_MAX_CONTEXT
from rkpipe.layout import Layout

# The domains several fields share. Registries are named "module:attr" and read when a value is
# checked, so this module imports none of them.
DIR_NAME = Text(pattern=r"[^\0]+", means="a directory path")
REPO_ID = Text(
    optional=True, pattern=r"[\w.-]+(/[\w.-]+)?", means="a Hugging Face repo id (org/name)"
)
REVISION = Text(means="a branch, tag or commit of the hub repo")
COMMIT = Text(
    optional=True, pattern=r"[0-9a-f]{40}", means="a 40-hex commit (set by rkpipe params)"
)
POSITIVE = Int(1)
WEIGHT_TYPES = OneOf(values=("QInt8", "QUInt8"))
CALIBRATE_METHODS = OneOf(values=("MinMax", "Entropy", "Percentile"))
ACCURACY_LEVELS = (0, 1, 2, 3, 4)
TORCH_DTYPES = ("float32", "float16", "bfloat16")
PLATFORM_NAMES = "rkpipe.config.platforms:PLATFORMS"
INTERPRETER = LocalPath(optional=True, exists=False, kind="Python interpreter")
# rknn-toolkit2's target_platform and quantized_dtype values (its user guide, 2.x)
RKNN_PLATFORMS = ("rk3562", "rk3566", "rk3568", "rk3576", "rk3588", "rv1103", "rv1106", "rv1126b")
RKNN_DTYPES = ("w8a8", "w8a16", "w16a16i", "w16a16i_dfp", "w4a16")


@dataclass
class PathsConfig:
    """Where stages read and write, relative to the repository root."""

    data_dir: str = typed("data", DIR_NAME)
    models_dir: str = typed("models", DIR_NAME)
    metrics_dir: str = typed("metrics", DIR_NAME)
    reports_dir: str = typed("reports", DIR_NAME)


@dataclass
class ModelConfig:
    """The LLM to acquire.

    ``source`` is one of ``package`` (weights shipped in a Python package),
    ``hub`` (Hugging Face hub), ``local`` (a directory) or ``gguf`` (a GGUF file,
    local or on the hub).
    """

    name: str = typed("smollm2-135m-instruct", Text())
    source: str = typed("package", OneOf(registry="rkpipe.llm.sources:SOURCES"))
    repo_id: str | None = typed(None, REPO_ID)
    revision: str = typed("main", REVISION)
    # The commit ``revision`` resolved to when params.yaml was composed (rkpipe.hub.pin_revision):
    # a moving branch that gets a new upstream commit changes params, so DVC reruns the download.
    commit: str | None = typed(None, COMMIT)
    path: str | None = typed(None, LocalPath(optional=True, kind="model file or directory"))
    package: str | None = typed(
        None, Text(optional=True, pattern=r"[A-Za-z_][\w.]*", means="an importable package")
    )
    gguf_file: str | None = typed(None, Text(optional=True, means="a GGUF file name or path"))
    allow_patterns: list[str] = typed([], Items(of=Text(means="a glob")))
    trust_remote_code: bool = typed(False, Flag())
    dtype: str = typed("float32", OneOf(values=TORCH_DTYPES))
    # What the "float" reference really is (e.g. weights de-quantized from Q4_1).
    float_note: str = typed("", Free(why="a note the report prints"))


@dataclass
class AsrQuantConfig:
    """onnxruntime quantization of the ASR model (the seed's scheme by default).

    ``scheme``: ``dynamic`` (``quantize_dynamic``: MatMul -> MatMulInteger, ``weight_type``,
    ``per_channel``, ``op_types``), ``static_qdq`` (``quantize_static`` in QDQ format with
    ``activation_type`` activations calibrated by ``calibrate_method`` on ``calib_clips``
    synthesized clips of ``calib_sentences``, never the eval clips), ``matmul_nbits4`` or
    ``matmul_nbits8`` (4- or 8-bit block-wise MatMulNBits, ``block_size``, ``symmetric``,
    ``accuracy_level``; 8-bit with level 4 is Whisper tiny.en's default).
    ``encoder_scheme`` overrides the scheme of the encoder file (Whisper's
    ``encoder_model.onnx``, wav2vec2's whole ``model.onnx``); null means ``scheme``.
    ``tie_embedding``: the int8 schemes let Whisper's embedding lookup read the int8 LM-head
    weight instead of keeping the fp32 table (see :mod:`rkpipe.asr.tie`).
    """

    scheme: str = typed("dynamic", OneOf(registry="rkpipe.asr.quantizers:SCHEMES"))
    weight_type: str = typed("QInt8", WEIGHT_TYPES)
    op_types: list[str] = typed(["MatMul"], Items(of=Text(means="an ONNX op type"), empty=False))
    per_channel: bool = typed(False, Flag())
    encoder_scheme: str | None = typed(
        None, OneOf(registry="rkpipe.asr.quantizers:SCHEMES", optional=True)
    )
    activation_type: str = typed("QUInt8", WEIGHT_TYPES)
    calibrate_method: str = typed("MinMax", CALIBRATE_METHODS)
    calib_sentences: str | None = typed(None, LocalPath(optional=True))
    calib_clips: int = typed(8, POSITIVE)
    block_size: int = typed(32, OneOf(values=(16, 32, 64, 128, 256)))
    symmetric: bool = typed(True, Flag())
    accuracy_level: int = typed(0, OneOf(values=ACCURACY_LEVELS))
    tie_embedding: bool = typed(True, Flag())


@dataclass
class AsrInitConfig:
    """Architecture of a randomly initialised ASR model (offline default only).

    Whisper reads every field but the ``conv_*`` ones; wav2vec2 maps ``d_model`` to
    ``hidden_size``, ``encoder_layers`` to ``num_hidden_layers``, ``ffn_dim`` to
    ``intermediate_size`` and uses ``conv_dim`` (all 7 feature-extractor convolutions),
    ``conv_pos_kernel`` / ``conv_pos_groups`` (positional convolution); its ``vocab_size``
    must be the character vocabulary's size (32).
    """

    d_model: int = typed(64, POSITIVE)
    encoder_layers: int = typed(2, POSITIVE)
    decoder_layers: int = typed(2, POSITIVE)
    attention_heads: int = typed(2, POSITIVE)
    ffn_dim: int = typed(256, POSITIVE)
    num_mel_bins: int = typed(80, POSITIVE)
    vocab_size: int = typed(51865, POSITIVE)
    max_source_positions: int = typed(1500, POSITIVE)
    max_target_positions: int = typed(448, POSITIVE)
    conv_dim: int = typed(512, POSITIVE)
    conv_pos_kernel: int = typed(128, POSITIVE)
    conv_pos_groups: int = typed(16, POSITIVE)


@dataclass
class AsrRknnConfig:
    """``asr.backend=rknn``: the encoder converted by rknn-toolkit2 in its own interpreter.

    ``python``: that interpreter (else ``$RKPIPE_RKNN_PYTHON``, else ``.venv-rknn/bin/python``
    made by ``scripts/setup_rknn.sh``). ``do_quantization`` gives ``quantized_dtype`` (w8a8,
    calibrated on ``calib_clips`` synthesized clips), else the NPU's fp16. ``simulate`` runs
    the converted model in the toolkit's x86 simulator against the ONNX encoder, on
    ``sim_clips_per_variant`` clips of every test-set variant, whose transcripts give the
    simulated WER (:mod:`rkpipe.asr.rknn_wer`).
    ``input_seconds``: the static input length of a CTC model (Whisper's is always 30 s).
    """

    target_platform: str = typed("rk3588", OneOf(values=RKNN_PLATFORMS))
    do_quantization: bool = typed(False, Flag())
    quantized_dtype: str = typed("w8a8", OneOf(values=RKNN_DTYPES))
    # rknn-toolkit2's rknn.config(quantized_algorithm=...) values
    quantized_algorithm: str = typed("normal", OneOf(values=("normal", "mmse", "kl_divergence")))
    optimization_level: int = typed(3, OneOf(values=(0, 1, 2, 3)))
    python: str | None = typed(None, INTERPRETER)
    calib_clips: int = typed(4, POSITIVE)
    simulate: bool = typed(True, Flag())
    # test-set clips per variant the simulator transcribes (WER); 0: two calibration clips only
    sim_clips_per_variant: int = typed(2, Int(0, 100))
    input_seconds: float = typed(20.0, Number(above=0, max=30))


@dataclass
class AsrConfig:
    """The speech model: ``architecture`` ``whisper`` or ``wav2vec2`` (CTC); ``source`` is
    ``random_init``, ``hub``, ``local`` or ``package`` (a CTranslate2 Whisper shipped in the
    Python package ``package``, converted exactly; ``revision`` then pins the wheel's
    version); ``backend`` ``onnxruntime`` or ``rknn`` (the encoder also converted for the NPU,
    see :class:`AsrRknnConfig`)."""

    name: str = typed("whisper-tiny-random", Text())
    architecture: str = typed("whisper", OneOf(registry="rkpipe.asr.architectures:ARCHITECTURES"))
    source: str = typed("random_init", OneOf(registry="rkpipe.asr.sources:ASR_SOURCES"))
    repo_id: str | None = typed(None, REPO_ID)
    revision: str = typed("main", REVISION)
    commit: str | None = typed(None, COMMIT)
    path: str | None = typed(None, LocalPath(optional=True, kind="model directory"))
    package: str | None = typed(
        None, Text(optional=True, pattern=r"[A-Za-z_][\w.]*", means="an importable package")
    )
    seed: int = typed(0, Int(0))
    init: AsrInitConfig = field(default_factory=AsrInitConfig)
    random_weights: bool = typed(True, Flag())
    language: str | None = typed(
        "en", Text(optional=True, pattern=r"[a-z]{2,3}", means="a language code such as en")
    )
    task: str = typed("transcribe", OneOf(values=("transcribe", "translate")))
    # Whisper's decoder has 448 positions, a few of which the prompt tokens take
    max_new_tokens: int = typed(64, Int(1, 440))
    eval_sentences: str = typed("data/asr/sentences.txt", LocalPath())
    # The test set's variants (rkpipe.asr.testset): clean espeak-ng clips plus noisy, tempo and
    # second-voice copies made with sox; evaluate reports WER per variant and over all.
    testset_variants: list[str] = typed(
        list(DEFAULT_VARIANTS),
        Items(
            of=Text(
                pattern=r"clean|(white|pink)_\d+(\.\d+)?db|tempo_\d+(\.\d+)?|voice_[a-z][\w+-]*",
                means="clean, white_<snr>db, pink_<snr>db, tempo_<factor> or voice_<espeak voice>",
            ),
            empty=False,
        ),
    )
    quant: AsrQuantConfig = field(default_factory=AsrQuantConfig)
    backend: str = typed("onnxruntime", OneOf(registry="rkpipe.asr.backends:ASR_BACKENDS"))
    rknn: AsrRknnConfig = field(default_factory=AsrRknnConfig)


@dataclass
class CalibConfig:
    """Calibration data for quantization.

    ``source``: ``prompts`` (a text file of prompts, one per line), ``dataset``
    (a Hugging Face ``datasets`` source) or ``json`` (a ready calibration file).
    """

    source: str = typed("prompts", OneOf(values=("prompts", "dataset", "json")))
    prompts_file: str = typed("data/calib/prompts.txt", LocalPath(when=("calib.source", "prompts")))
    json_file: str | None = typed(None, LocalPath(optional=True, when=("calib.source", "json")))
    dataset: str | None = typed(None, Text(optional=True, means="a datasets name or path"))
    dataset_config: str | None = typed(None, Text(optional=True))
    split: str = typed("train", Text(means="a dataset split, e.g. train or train[:200]"))
    input_column: str = typed("text", Text())
    target_column: str | None = typed(None, Text(optional=True))
    num_samples: int = typed(64, POSITIVE)
    max_input_tokens: int = typed(256, POSITIVE)
    max_new_tokens: int = typed(48, POSITIVE)
    batch_size: int = typed(16, POSITIVE)
    apply_chat_template: bool = typed(True, Flag())
    seed: int = typed(0, Int(0))


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

    scheme: str = typed("dynamic", OneOf(registry="rkpipe.backends.ort.schemes:SCHEMES"))
    weight_type: str = typed("QInt8", WEIGHT_TYPES)
    per_channel: bool = typed(False, Flag())
    op_types: list[str] = typed(["MatMul"], Items(of=Text(means="an ONNX op type"), empty=False))
    block_size: int = typed(32, OneOf(values=(16, 32, 64, 128, 256)))
    accuracy_level: int = typed(0, OneOf(values=ACCURACY_LEVELS))
    # 8-bit MatMulNBits (Q8_0 or 8-bit embedding+lm_head): level 0 is a slow fp32 path in ORT 1.32
    accuracy_level_8bit: int = typed(4, OneOf(values=ACCURACY_LEVELS))
    embedding_bits: int = typed(0, OneOf(registry="rkpipe.backends.ort.schemes:EMBEDDING_BITS"))
    activation_type: str = typed("QUInt8", WEIGHT_TYPES)
    calibrate_method: str = typed("MinMax", CALIBRATE_METHODS)
    calib_records: int = typed(8, POSITIVE)
    calib_max_tokens: int = typed(256, POSITIVE)
    genai_python: str | None = typed(None, INTERPRETER)
    # GGUF schemes: how Q4_1 offsets are carried (residual: exact side branch; folded: 4-bit
    # extra K blocks of the same MatMulNBits; mse: none, re-encoded blocks)
    q4_1_mode: str = typed("residual", OneOf(registry="rkpipe.backends.ort.schemes:Q4_1_MODES"))
    # genai_* / gguf_exact: 4-bit MatMulNBits accuracy level of one-token (decode) steps, in an
    # If branch beside the prefill graph (None: one graph for both)
    decode_accuracy_level: int | None = typed(None, OneOf(values=ACCURACY_LEVELS, optional=True))
    # dynamic / static_qdq int8: quantize weights to 7 bits so that u8 x s8 products cannot
    # saturate AVX2's 16-bit vpmaddubsw on x86 without VNNI. auto: on for per-channel QInt8
    # weights (see rkpipe.backends.ort.reduce_range); true / false force it.
    reduce_range: str = typed("auto", OneOf(values=("auto", "true", "false"), casefold=True))


@dataclass
class RkllmQuantConfig:
    """Options only the rkllm-toolkit backend reads."""

    python: str | None = typed(None, INTERPRETER)
    # rkllm-toolkit's load_huggingface(device=..., dtype=...) values
    device: str = typed("cpu", OneOf(values=("cpu", "cuda")))
    load_dtype: str = typed("float32", OneOf(values=TORCH_DTYPES))
    extra_qparams: dict[str, Any] | None = typed(
        None, Free(why="passed to rkllm.build() as they are", optional=True)
    )


@dataclass
class QuantConfig:
    """How the LLM is quantized. ``backend`` picks an entry of the backend registry.

    For ``rkllm`` the dtype is a toolkit ``quantized_dtype`` (``w8a8``, ``w4a16_g128`` ...),
    checked against the platform matrix; for ``onnxruntime`` it is ``int8`` or ``int4``.
    """

    backend: str = typed("onnxruntime", OneOf(registry="rkpipe.backends:available"))
    # The backend's own dtypes are checked by the cross-field rules (rkpipe.config.validate).
    dtype: str = typed("int8", OneOf(registry="rkpipe.config.platforms:ALL_DTYPES"))
    algorithm: str = typed(
        "normal",
        Text(pattern=r"(normal|grq|gdq)(_r\d+)?", means="normal, grq, or their _rN forms"),
    )
    optimization_level: int = typed(1, OneOf(values=(0, 1)))
    num_npu_core: int | None = typed(None, Int(1, 3, optional=True))
    hybrid_rate: float = typed(0.0, Number(min=0, below=1))
    max_context: int = typed(4096, Int(32, RKLLM_MAX_CONTEXT))
    ort: OrtQuantConfig = field(default_factory=OrtQuantConfig)
    rkllm: RkllmQuantConfig = field(default_factory=RkllmQuantConfig)


@dataclass
class PlatformConfig:
    """The target SoC; ``host`` means the machine running the pipeline."""

    name: str = typed("host", OneOf(registry=PLATFORM_NAMES))


@dataclass
class BoardConfig:
    """Where ``deploy_bench`` runs. ``local`` runs the benchmark runner on this host."""

    name: str = typed("local", Text())
    transport: str = typed("local", OneOf(registry="rkpipe.board.transport:TRANSPORTS"))
    host: str | None = typed(None, Text(optional=True, means="a host name or address"))
    port: int = typed(22, Int(1, 65535))
    user: str | None = typed(None, Text(optional=True))
    key_file: str | None = typed(None, LocalPath(optional=True, kind="private key file"))
    known_hosts: str | None = typed(None, LocalPath(optional=True, exists=False))
    workdir: str = typed("/tmp/rkpipe-board", Text(pattern="/.*", means="an absolute path"))
    platform: str | None = typed(None, OneOf(registry=PLATFORM_NAMES, optional=True))
    python: str = typed("python3", Text(means="the board's Python interpreter"))
    # Rockchip's runtime as the board sees it (its docs install it in /usr/lib). An .rkllm
    # variant is benchmarked by rkllm_runner through it; on board=local a missing file means
    # "no NPU here" and the LLM benchmark is skipped rather than failed.
    rkllm_lib: str = typed("/usr/lib/librkllmrt.so", Text(means="a path on the board"))
    # The runtime's ABI: auto probes its version; a runtime newer than the newest release the
    # runner was checked against is refused unless named here (its rkllm.h checked by hand).
    rkllm_abi: str = typed("auto", OneOf(registry="rkpipe.engines.rkllm_runner:ABI_CHOICES"))
    # Prefix for /proc and /sys reads: "" on a real board, a directory on the loopback test board.
    root: str = typed("", Text(empty=True, means="a path prefix on the board"))
    pin_frequency: bool = typed(False, Flag())
    timeout_s: float = typed(600.0, Number(above=0))


@dataclass
class BenchConfig:
    """Benchmark methodology (Rockchip's and llama-bench's defaults)."""

    prompt_tokens: int = typed(128, POSITIVE)
    new_tokens: int = typed(64, POSITIVE)
    warmup: int = typed(2, Int(0))
    repetitions: int = typed(5, POSITIVE)
    threads: int = typed(2, POSITIVE)


@dataclass
class EvalConfig:
    """Host accuracy evaluation of the LLM."""

    text_file: str = typed("data/eval/eval.txt", LocalPath())
    seqlen: int = typed(512, Int(16))
    threads: int = typed(2, POSITIVE)
    # A numerically broken LLM (NaN, PPL > 10x float, top-1 < 0.2) fails evaluate; true keeps
    # its figures, flagged llm_broken=1 and tagged gate=broken (rkpipe.evaluate.sanity).
    keep_broken: bool = typed(False, Flag())
    # deploy_bench also scores the variant on the board (rkpipe.evaluate.device): the same
    # windows, and per position the float model's device_topk most likely tokens, for the KLD.
    device: bool = typed(True, Flag())
    device_topk: int = typed(32, Int(1, 1024))


# The tracking URIs MLflow's client opens: a server, or a store it opens itself.
TRACKING_SCHEMES = ("http", "https", "sqlite", "file", "postgresql", "postgresql+psycopg", "mysql")


@dataclass
class TrackingConfig:
    """MLflow settings. ``uri: null`` means the project's SQLite store (see tracking)."""

    uri: str | None = typed(
        None,
        Uri(
            optional=True,
            via="MLFLOW_TRACKING_USERNAME and MLFLOW_TRACKING_PASSWORD",
            schemes=TRACKING_SCHEMES,
        ),
    )
    experiment: str = typed("rkpipe", Text())
    enabled: bool = typed(True, Flag())
    # Upper bound, in seconds, on waiting for an unreachable tracking server (MLflow's own
    # retries take about 250 s); past it a stage fails with one line naming the URI.
    timeout_s: float = typed(10.0, Number(above=0, max=600))
    # When a tracking server is down past timeout_s: true keeps every param, metric, tag and
    # artifact in a local journal (.dvc/tmp/rkpipe/journal) that the next stage or
    # `rkpipe sync` replays; false fails the stage. The embedded store never journals.
    journal: bool = typed(True, Flag())


@dataclass
class GateRule:
    """One acceptance gate on a variant's own metric: ``min <= metrics[metric] <= max``."""

    metric: str = typed("ppl_delta_pct", Text(means="a metric name"))
    max: float | None = typed(None, Number(optional=True))
    min: float | None = typed(None, Number(optional=True))
    description: str = typed("", Free(why="shown beside the verdict"))


@dataclass
class GatesConfig:
    """Acceptance gates ``rkpipe compare`` and sweeps apply; a variant failing one is tagged
    ``gate=failed`` in MLflow. They judge results, so they are not part of a variant's id."""

    enabled: bool = typed(True, Flag())
    # Each rule is a GateRule, whose fields carry their own domains (checked by validate).
    rules: dict[str, GateRule] = typed({}, Free(why="named GateRule entries"))


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
