"""Greedy LLM inference and benchmark on an optimum ``text-generation-with-past`` ONNX export.

SELF-CONTAINED: imports only the standard library, numpy, onnxruntime and ``engine_shared.py``
(and uses no syntax newer than Python 3.8), because this file is copied with that one to an
(aarch64) board and run there::

    python ort_llm.py --model DIR --prompt-tokens 128 --new-tokens 64 \
        --warmup 2 --repetitions 5 --threads 2

The model directory holds ``model.onnx`` whose inputs are ``input_ids``,
``attention_mask``, optionally ``position_ids``, and ``past_key_values.N.key/value``
(shape ``[batch, kv_heads, past_len, head_dim]``); outputs are ``logits`` and
``present.N.key/value``. Batch size is always 1. Both optimum's export and
onnxruntime-genai's builder graphs run: outputs are fetched by name (the builder lists
all present keys before the values) and ``position_ids`` is fed only when the graph has
it (the builder's GroupQueryAttention derives positions from ``attention_mask``).

The CLI prints one JSON object per generation: ``kind`` ("llm"), ``rep`` (numbered from 0
separately for warm-ups and measured runs), ``warmup``, the :meth:`OrtCausalLM.generate`
metrics without ``tokens``, ``threads``, ``load_ms`` and ``peak_rss_mb``. End of sequence
is disabled, so every run decodes exactly ``--new-tokens`` tokens.

Each decode step feeds the previous step's ``present`` arrays back as ``past`` inputs
with plain ``session.run``; an IOBinding variant that keeps the cache in onnxruntime
OrtValues measured no faster on the host (128 and 1500 tokens of context).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from collections.abc import Sequence
from typing import Any

import numpy as np
import onnxruntime as ort

try:  # the package (board=local, tests); on a board, the file pushed beside this one
    from rkpipe.engines import engine_shared as shared
except ImportError:
    import engine_shared as shared  # type: ignore[no-redef]

MODEL_FILE = "model.onnx"
PAST_PREFIX = "past_key_values."
PRESENT_PREFIX = "present."
# Benchmark prompts draw ids from [PROMPT_ID_LOW, vocab): SmolLM2-style tokenizers keep their
# special/control tokens in the low ids (0..16). Speed does not depend on which ids are fed,
# so avoiding them only keeps the prompt an ordinary text-like sequence.
PROMPT_ID_LOW = 100
PROMPT_SEED = 0

_ORT_TO_NUMPY = {
    "tensor(float)": np.float32,
    "tensor(float16)": np.float16,
    "tensor(double)": np.float64,
    "tensor(int64)": np.int64,
    "tensor(int32)": np.int32,
}


class OrtCausalLM:
    """An ONNX causal LM with KV cache on onnxruntime's CPU provider.

    Args:
        model_dir: directory with ``model.onnx`` (and optionally ``config.json``).
        threads: intra-op threads (inter-op is 1, graph optimizations ORT_ENABLE_ALL).

    Raises:
        FileNotFoundError: no ``model.onnx`` in ``model_dir``.
        ValueError: the graph's inputs are not those of a text-generation-with-past export.
    """

    def __init__(self, model_dir: str, threads: int = 2) -> None:
        self.model_dir = str(model_dir)
        path = os.path.join(self.model_dir, MODEL_FILE)
        if not os.path.isfile(path):
            raise FileNotFoundError(f"{path} not found: expected an optimum ONNX export")
        opts = ort.SessionOptions()
        opts.intra_op_num_threads = threads
        opts.inter_op_num_threads = 1
        opts.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        self.session = ort.InferenceSession(path, opts, providers=["CPUExecutionProvider"])
        self._read_io()

    def _read_io(self) -> None:
        inputs = {i.name: i for i in self.session.get_inputs()}
        missing = {"input_ids", "attention_mask"} - set(inputs)
        past = sorted((n for n in inputs if n.startswith(PAST_PREFIX)), key=_past_order)
        if missing or not past:
            raise ValueError(
                f"{self.model_dir}/{MODEL_FILE}: expected inputs input_ids, attention_mask and "
                f"{PAST_PREFIX}N.key/value, got {sorted(inputs)}"
            )
        unknown = set(inputs) - {"input_ids", "attention_mask", "position_ids"} - set(past)
        if unknown:
            raise ValueError(f"{self.model_dir}/{MODEL_FILE}: unsupported inputs {sorted(unknown)}")
        self.id_dtype = _numpy_dtype(inputs["input_ids"])
        self.mask_dtype = _numpy_dtype(inputs["attention_mask"])
        self.has_position_ids = "position_ids" in inputs
        if self.has_position_ids:
            self.pos_dtype = _numpy_dtype(inputs["position_ids"])
        self.past_names = past
        self.present_names = [PRESENT_PREFIX + n[len(PAST_PREFIX) :] for n in past]
        self._output_names = ["logits", *self.present_names]
        outputs = [o.name for o in self.session.get_outputs()]
        if "logits" not in outputs or set(self.present_names) - set(outputs):
            raise ValueError(f"{self.model_dir}/{MODEL_FILE}: unexpected outputs {outputs}")
        config = _read_config(self.model_dir)
        self.empty_past = {n: self._empty_past(inputs[n], config) for n in past}
        logits_shape = next(o.shape for o in self.session.get_outputs() if o.name == "logits")
        vocab = logits_shape[-1] if isinstance(logits_shape[-1], int) else None
        self.vocab_size = int(vocab or config.get("vocab_size", 0))
        self.num_layers = len(past) // 2

    def _empty_past(self, node: Any, config: dict[str, Any]) -> np.ndarray:
        shape = list(node.shape)
        heads = shape[1] if isinstance(shape[1], int) else _kv_heads(config)
        head_dim = shape[3] if isinstance(shape[3], int) else _head_dim(config)
        return np.zeros((1, heads, 0, head_dim), dtype=_numpy_dtype(node))

    def _feed(self, ids: np.ndarray, start: int) -> dict[str, np.ndarray]:
        """Non-past inputs for ``ids`` placed at positions ``start .. start+len(ids)-1``."""
        n = ids.shape[1]
        feed = {
            "input_ids": ids.astype(self.id_dtype, copy=False),
            "attention_mask": np.ones((1, start + n), dtype=self.mask_dtype),
        }
        if self.has_position_ids:
            feed["position_ids"] = np.arange(start, start + n, dtype=self.pos_dtype)[None, :]
        return feed

    def logits(self, input_ids: Sequence[int]) -> np.ndarray:
        """Logits ``[T, vocab]`` (float32) of one forward over ``input_ids`` with an empty cache."""
        ids = np.asarray(input_ids, dtype=np.int64)[None, :]
        feed = self._feed(ids, 0)
        feed.update(self.empty_past)
        (logits,) = self.session.run(["logits"], feed)
        return np.asarray(logits[0], dtype=np.float32)

    def generate(
        self, prompt_ids: Sequence[int], max_new_tokens: int, eos_id: int | None = None
    ) -> dict[str, Any]:
        """Greedy decoding with the KV cache.

        Returns ``tokens`` (the generated ids, eos included if hit), ``prompt_tokens``,
        ``ttft_ms`` (call start to the first generated token), ``prefill_ms`` (the prompt
        forward alone), ``decode_ms`` / ``decode_tokens`` (the remaining tokens, one forward
        each), ``decode_tok_per_s`` and ``prefill_tok_per_s``.

        Raises:
            ValueError: empty prompt or ``max_new_tokens`` < 1.
        """
        start = time.perf_counter()
        if len(prompt_ids) == 0 or max_new_tokens < 1:
            raise ValueError("generate needs a non-empty prompt and max_new_tokens >= 1")
        ids = np.asarray(prompt_ids, dtype=np.int64)[None, :]
        feed = {**self._feed(ids, 0), **self.empty_past}
        prefill_start = time.perf_counter()
        outputs = self.session.run(self._output_names, feed)
        token = int(np.argmax(outputs[0][0, -1]))
        first = time.perf_counter()
        tokens = [token]
        pos = ids.shape[1]
        step_ids = np.zeros((1, 1), dtype=self.id_dtype)
        while len(tokens) < max_new_tokens and token != eos_id:
            step_ids[0, 0] = token
            feed = self._feed(step_ids, pos)
            for i, name in enumerate(self.past_names):
                feed[name] = outputs[i + 1]
            outputs = self.session.run(self._output_names, feed)
            token = int(np.argmax(outputs[0][0, -1]))
            tokens.append(token)
            pos += 1
        end = time.perf_counter()
        return _timings(tokens, ids.shape[1], start, prefill_start, first, end)


def _timings(
    tokens: list[int], prompt: int, start: float, prefill_start: float, first: float, end: float
) -> dict[str, Any]:
    prefill_s = first - prefill_start
    decode_s = end - first
    decode_tokens = len(tokens) - 1
    return {
        "tokens": tokens,
        "prompt_tokens": prompt,
        "ttft_ms": (first - start) * 1e3,
        "prefill_ms": prefill_s * 1e3,
        "decode_ms": decode_s * 1e3,
        "decode_tokens": decode_tokens,
        "decode_tok_per_s": decode_tokens / decode_s if decode_tokens else 0.0,
        "prefill_tok_per_s": prompt / prefill_s if prefill_s > 0 else 0.0,
    }


def _numpy_dtype(node: Any) -> Any:
    if node.type not in _ORT_TO_NUMPY:
        raise ValueError(f"input {node.name} has unsupported type {node.type}")
    return _ORT_TO_NUMPY[node.type]


def _past_order(name: str) -> tuple[int, str]:
    layer, _, kind = name[len(PAST_PREFIX) :].partition(".")
    return (int(layer) if layer.isdigit() else 0, kind)


def _read_config(model_dir: str) -> dict[str, Any]:
    try:
        with open(os.path.join(model_dir, "config.json"), encoding="utf-8") as handle:
            return json.load(handle)
    except (OSError, ValueError):
        return {}


def _kv_heads(config: dict[str, Any]) -> int:
    heads = config.get("num_key_value_heads") or config.get("num_attention_heads")
    if not heads:
        raise ValueError("KV heads are symbolic in the graph and config.json does not give them")
    return int(heads)


def _head_dim(config: dict[str, Any]) -> int:
    if config.get("head_dim"):
        return int(config["head_dim"])
    try:
        return int(config["hidden_size"]) // int(config["num_attention_heads"])
    except (KeyError, ValueError, ZeroDivisionError) as exc:
        raise ValueError("head_dim is symbolic in the graph and not in config.json") from exc


def benchmark_prompt(n: int, vocab_size: int, seed: int = PROMPT_SEED) -> list[int]:
    """A deterministic prompt of exactly ``n`` ids drawn uniformly from [100, vocab_size).

    Ids below 100 are skipped because tokenizers put their special/control tokens there
    (SmolLM2: 0..16); a fixed ``numpy.random.RandomState(seed)`` makes the prompt identical
    on every machine and numpy version.
    """
    low = PROMPT_ID_LOW if vocab_size > 2 * PROMPT_ID_LOW else 0
    return np.random.RandomState(seed).randint(low, vocab_size, size=n).tolist()


def run_benchmark(args: argparse.Namespace) -> list[dict[str, Any]]:
    """Load the model, run ``args.warmup`` then ``args.repetitions`` generations; return rows."""
    load_start = time.perf_counter()
    model = OrtCausalLM(args.model, threads=args.threads)
    load_ms = (time.perf_counter() - load_start) * 1e3
    prompt = benchmark_prompt(args.prompt_tokens, model.vocab_size)
    plan = [(True, i) for i in range(args.warmup)] + [(False, i) for i in range(args.repetitions)]
    rows = []
    for warmup, rep in plan:
        result = model.generate(prompt, args.new_tokens, eos_id=None)
        del result["tokens"]
        row = {"kind": "llm", "rep": rep, "warmup": warmup, **result}
        row.update(threads=args.threads, load_ms=load_ms, peak_rss_mb=shared.peak_rss_mb())
        rows.append(row)
        print(json.dumps(row), flush=True)
    return rows


def run_eval(args: argparse.Namespace) -> int:
    """Device accuracy: one :data:`engine_shared.EVAL_ROW_KIND` row per window of the request."""
    request = shared.read_eval_request(args.eval_request)
    model = OrtCausalLM(args.model, threads=args.threads)
    for index, (window, topk) in enumerate(zip(request["windows"], request["ref_topk"])):  # noqa: B905
        row = shared.window_scores(model.logits(window), window, topk, index)
        print(json.dumps(row), flush=True)
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """CLI: benchmark greedy generation; prints one JSON object per run on stdout. With
    ``--eval-request``, score the request's windows instead (device accuracy)."""
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    parser.add_argument("--model", required=True, help="directory holding model.onnx")
    parser.add_argument("--prompt-tokens", type=int, default=128)
    parser.add_argument("--new-tokens", type=int, default=64)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--repetitions", type=int, default=5)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--eval-request", help="score these windows instead of benchmarking")
    args = parser.parse_args(argv)
    if args.eval_request:
        try:
            return run_eval(args)
        except ValueError as exc:  # one line the host can record as the reason
            print(f"ort_llm: error: {exc}", file=sys.stderr, flush=True)
            return 2
    if args.prompt_tokens < 1 or args.new_tokens < 1 or args.repetitions < 1 or args.warmup < 0:
        parser.error("--prompt-tokens, --new-tokens, --repetitions must be >= 1, --warmup >= 0")
    run_benchmark(args)
    return 0


if __name__ == "__main__":
    sys.exit(main())
