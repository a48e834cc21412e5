"""The Layout the library and stages use names exactly the outputs dvc.yaml declares."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import yaml

from rkpipe.config.schema import PathsConfig, PipelineConfig
from rkpipe.layout import Layout

REPO = Path(__file__).resolve().parents[2]


def declared_outputs(paths: PathsConfig) -> dict[str, set[str]]:
    """stage -> its outs, metrics and plots, with ``${paths.*}`` filled in."""
    stages = yaml.safe_load((REPO / "dvc.yaml").read_text(encoding="utf-8"))["stages"]
    values = {f"${{paths.{k}}}": v for k, v in dataclasses.asdict(paths).items()}
    found: dict[str, set[str]] = {}
    for name, stage in stages.items():
        for kind in ("outs", "metrics", "plots"):
            for out in stage.get(kind) or []:
                path = out if isinstance(out, str) else next(iter(out))
                for key, value in values.items():
                    path = path.replace(key, value)
                found.setdefault(name, set()).add(path)
    return found


def layout_outputs(layout: Layout) -> dict[str, set[Path]]:
    return {
        "preflight": {
            layout.preflight_verdict,
            layout.source_fingerprint("llm"),
            layout.source_fingerprint("asr"),
        },
        "host_fingerprint": {layout.host_fingerprint, layout.board_fingerprint},
        "download_llm": {
            layout.llm.float,
            layout.metrics_file("download_llm"),
            layout.metrics_details("download_llm"),
        },
        "download_asr": {layout.asr.float},
        "asr_testset": {layout.asr_testset},
        "calibrate": {
            layout.calibration,
            layout.metrics_file("calibrate"),
            layout.metrics_details("calibrate"),
        },
        "export_llm": {layout.llm.onnx_fp32},
        "quantize_llm": {
            layout.llm.quantized,
            layout.metrics_file("quantize_llm"),
            layout.metrics_details("quantize_llm"),
        },
        "export_asr": {layout.asr.onnx_fp32},
        "quantize_asr": {
            layout.asr.quantized,
            layout.metrics_file("quantize_asr"),
            layout.metrics_details("quantize_asr"),
        },
        "reference_logits": {
            layout.reference_logits,
            layout.metrics_file("reference_logits"),
            layout.metrics_details("reference_logits"),
        },
        "evaluate": {layout.metrics_file("evaluate"), layout.metrics_details("evaluate")},
        "deploy_bench": {
            layout.metrics_file("bench"),
            layout.metrics_details("bench"),
            layout.bench_llm_samples,
            layout.bench_asr_samples,
        },
        "report": {layout.report, layout.metrics_file("report")},
        "record": {layout.output_record},
    }


def test_layout_and_dvc_yaml_name_the_same_outputs():
    paths = PathsConfig()
    named = {
        stage: {p.as_posix() for p in outs}
        for stage, outs in layout_outputs(Layout.from_paths(paths)).items()
    }
    assert named == declared_outputs(paths)


def test_the_layout_follows_paths_and_the_workspace_root(tmp_path):
    paths = PathsConfig(data_dir="d", models_dir="m", metrics_dir="x", reports_dir="r")
    layout = Layout.from_paths(paths, tmp_path)
    assert layout.llm.quantized == tmp_path / "m" / "llm" / "quantized"
    assert layout.host_fingerprint == tmp_path / "d" / "host" / "host.json"
    assert layout.metrics_file("bench") == tmp_path / "x" / "bench.json"
    assert PipelineConfig(paths=paths).layout == Layout.from_paths(paths)


def test_every_declared_plot_is_a_stage_output():
    """A top-level plot the main job does not write makes every `dvc plots show` on a fresh
    clone warn ("DVC failed to load some plots"), and a duplicate renders a second chart."""
    dvc = yaml.safe_load((REPO / "dvc.yaml").read_text(encoding="utf-8"))
    assert not dvc.get("plots"), "declare plots on the stage that writes them"
    declared = [next(iter(p)) if isinstance(p, dict) else p
                for stage in dvc["stages"].values() for p in stage.get("plots", [])]  # fmt: skip
    assert len(declared) == len(set(declared)) == 2
