"""Every config field has a domain, and a value outside it fails composition in one line."""

from __future__ import annotations

from pathlib import Path

import pytest

from rkpipe.config import PipelineConfig, compose
from rkpipe.config.domain import (
    Int,
    LocalPath,
    Number,
    OneOf,
    domain_of,
    domain_problems,
    path_problems,
    undeclared_fields,
    walk,
)
from rkpipe.errors import ConfigError
from rkpipe.secrets import redact_uri

CONF = Path(__file__).resolve().parents[2] / "conf"


def test_every_schema_field_declares_a_domain():
    assert undeclared_fields(PipelineConfig) == []


def test_defaults_lie_in_their_domains():
    assert domain_problems(PipelineConfig()) == []


def test_every_registry_backed_domain_resolves_to_names():
    for key, field, _ in walk(PipelineConfig()):
        domain = domain_of(field)
        if isinstance(domain, OneOf) and domain.registry:
            assert domain.allowed(), f"{key}: registry {domain.registry} is empty"


@pytest.mark.parametrize(
    "override, fragment",
    [
        ("model.dtype=banana", "model.dtype='banana' is not allowed; allowed: float32, float16"),
        ("eval.threads=-1", "eval.threads=-1 is out of range; allowed: an integer >= 1"),
        ("eval.threads=0", "eval.threads=0 is out of range"),
        ("asr.max_new_tokens=0", "asr.max_new_tokens=0 is out of range; allowed: an integer >= 1"),
        (
            "board.port=70000",
            "board.port=70000 is out of range; allowed: an integer >= 1 and <= 65535",
        ),
        ("board.timeout_s=-5", "board.timeout_s=-5.0 is out of range; allowed: a number > 0"),
        (
            "board.workdir=relative/dir",
            "board.workdir='relative/dir' is not allowed; allowed: an absolute path",
        ),
        ("bench.repetitions=0", "bench.repetitions=0 is out of range"),
        ("bench.warmup=-1", "bench.warmup=-1 is out of range; allowed: an integer >= 0"),
        ("calib.num_samples=0", "calib.num_samples=0 is out of range"),
        ("quant.rkllm.device=tpu", "quant.rkllm.device='tpu' is not allowed; allowed: cpu, cuda"),
        ("quant.ort.calib_records=0", "quant.ort.calib_records=0 is out of range"),
        ("quant.ort.block_size=48", "quant.ort.block_size=48 is not allowed; allowed: 16, 32, 64"),
        ("quant.ort.reduce_range=maybe", "quant.ort.reduce_range='maybe' is not allowed"),
        (
            "asr.task=summarise",
            "asr.task='summarise' is not allowed; allowed: transcribe, translate",
        ),
        ("asr.language=English", "asr.language='English' is not allowed; allowed: a language code"),
        ("asr.rknn.quantized_algorithm=best", "allowed: normal, mmse, kl_divergence"),
        ("model.commit=abc", "model.commit='abc' is not allowed; allowed: a 40-hex commit"),
        ("model.repo_id='has space/x'", "model.repo_id='has space/x' is not allowed"),
        ("tracking.timeout_s=0", "tracking.timeout_s=0.0 is out of range"),
        ("calib.source=web", "calib.source='web' is not allowed; allowed: prompts, dataset, json"),
        ("board.transport=telnet", "board.transport='telnet' is not allowed; allowed: "),
        ("quant.ort.scheme=magic", "quant.ort.scheme='magic' is not allowed; allowed: "),
        ("model.source=ftp", "model.source='ftp' is not allowed; allowed: "),
        ("asr.architecture=conformer", "asr.architecture='conformer' is not allowed; allowed: "),
        ("quant.algorithm=best", "quant.algorithm='best' is not allowed; allowed: normal, grq"),
        ("gates.rules.ppl.metric=''", "gates.rules.ppl.metric is empty"),
        ("tracking.uri=htp://mlflow.lan:5000", "has scheme 'htp' (did you mean http://?); allowed"),
        (
            "tracking.uri=http//mlflow.lan:5000",
            "tracking.uri='http//mlflow.lan:5000' has no scheme",
        ),
        ("tracking.uri=http://mlflow.lan:50O0", "has a port that is not a number from 1 to 65535"),
        ("tracking.uri=http://:5000", "tracking.uri='http://:5000' names no host"),
    ],
)
def test_value_outside_its_domain_fails_in_one_line(override, fragment):
    with pytest.raises(ConfigError) as info:
        compose(CONF, [override])
    message = str(info.value)
    assert fragment in message
    assert "\n" not in message


def test_a_password_in_the_tracking_uri_is_refused_without_printing_it():
    with pytest.raises(ConfigError) as info:
        compose(CONF, ["tracking.uri=http://alice:s3cr3t-planted@127.0.0.1:5000"])
    message = str(info.value)
    assert "s3cr3t-planted" not in message
    assert "http://***@127.0.0.1:5000" in message
    assert "MLFLOW_TRACKING_PASSWORD" in message


def test_redact_uri_keeps_everything_but_the_password():
    assert redact_uri("postgresql://u:pw@db:5432/x?a=1") == "postgresql://***@db:5432/x?a=1"
    assert redact_uri("see https://tok3n@hub.example/x") == "see https://***@hub.example/x"
    assert redact_uri("http://127.0.0.1:5000") == "http://127.0.0.1:5000"


def test_number_domains_reject_booleans_and_describe_bounds():
    assert (
        Int(1, 3).problem("k", True) == "k=True is not a number; allowed: an integer >= 1 and <= 3"
    )
    assert Number(above=0).problem("k", 0.5) is None
    assert OneOf(values=(0, 1)).problem("k", True) is not None


def test_path_problems_name_missing_inputs_only_when_the_stage_reads_them(tmp_path):
    cfg = compose(CONF, [f"eval.text_file={tmp_path}/missing.txt"])
    problems = path_problems(cfg)
    assert any(
        p.startswith(f"eval.text_file='{tmp_path}/missing.txt': no such file") for p in problems
    )
    # calib.json_file is read only when calib.source=json
    unused = compose(CONF, [f"calib.json_file={tmp_path}/nope.json"])
    assert not any("calib.json_file" in p for p in path_problems(unused))
    used = compose(CONF, ["calib.source=json", f"calib.json_file={tmp_path}/nope.json"])
    assert any("calib.json_file" in p for p in path_problems(used))
    assert LocalPath(kind="dir").missing("k", str(tmp_path), {}) is None
