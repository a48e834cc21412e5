"""Reproduction records: declared outputs, hashes, timing-aware verdicts, dirty-tree detection."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

from rkpipe.reproduce import (
    compare_metrics,
    compare_outputs,
    hash_outputs,
    is_timing,
    output_record,
)
from rkpipe.workspace import changed_files, declared_outputs, git_state

DVC_YAML = """
stages:
  a:
    cmd: python a.py
    outs:
      - ${paths.models_dir}/m
    metrics:
      - ${paths.metrics_dir}/a.json:
          cache: false
  b:
    cmd: python b.py
    outs:
      - ${paths.reports_dir}/report.md:
          cache: false
      - ${paths.reports_dir}/outputs.sha256.json:
          cache: false
"""
PARAMS = {"paths": {"models_dir": "models", "metrics_dir": "metrics", "reports_dir": "reports"}}


def make_workspace(root: Path, ttft: float = 12.5, ppl: float = 30.0) -> Path:
    root.mkdir(parents=True, exist_ok=True)
    (root / "dvc.yaml").write_text(DVC_YAML)
    (root / "models" / "m").mkdir(parents=True)
    (root / "models" / "m" / "w.bin").write_bytes(b"\x00\x01")
    (root / "metrics").mkdir()
    (root / "metrics" / "a.json").write_text(json.dumps({"ttft_ms": ttft, "ppl": ppl}))
    (root / "reports").mkdir()
    (root / "reports" / "report.md").write_text(f"| {ttft} | {ppl} |\n")
    return root


def test_declared_outputs_resolve_interpolation(tmp_path):
    (tmp_path / "dvc.yaml").write_text(DVC_YAML)
    assert declared_outputs(tmp_path / "dvc.yaml", PARAMS) == [
        "models/m", "metrics/a.json", "reports/report.md", "reports/outputs.sha256.json",
    ]  # fmt: skip
    assert declared_outputs(tmp_path / "missing.yaml", PARAMS) == []


def test_hashes_cover_every_file_and_exclude_the_record(tmp_path):
    root = make_workspace(tmp_path)
    record = output_record(root, PARAMS)
    assert sorted(record["files"]) == ["metrics/a.json", "models/m/w.bin", "reports/report.md"]
    assert list(record["without_timings"]) == ["metrics/a.json"]
    assert hash_outputs(root, ["nope"]) == {"nope": "missing"}


def test_timings_are_reported_not_counted(tmp_path):
    first = output_record(make_workspace(tmp_path / "a"), PARAMS)
    again = output_record(make_workspace(tmp_path / "b", ttft=13.0), PARAMS)
    verdict = compare_outputs(first, again)
    assert verdict.identical == ["models/m/w.bin"]
    assert verdict.timings_only == ["metrics/a.json"] and verdict.derived == ["reports/report.md"]
    assert verdict.ok


def test_a_real_difference_is_a_mismatch(tmp_path):
    first = output_record(make_workspace(tmp_path / "a"), PARAMS)
    root = make_workspace(tmp_path / "b", ppl=31.0)
    (root / "models" / "m" / "w.bin").write_bytes(b"\x00\x02")
    verdict = compare_outputs(first, output_record(root, PARAMS))
    assert verdict.differ == ["models/m/w.bin"] and not verdict.ok
    assert verdict.measurements == ["metrics/a.json"]  # a metrics file is a measurement
    (root / "models" / "m" / "w.bin").unlink()
    assert compare_outputs(first, output_record(root, PARAMS)).missing == ["models/m/w.bin"]


def test_metric_verdicts():
    recorded = {"ppl": 30.0, "ttft_ms": 10.0, "decode_tok_per_s": 20.0, "asr_rtf": 0.1, "kld": 1.0}
    rebuilt = {"ppl": 30.0, "ttft_ms": 11.0, "decode_tok_per_s": 19.0, "asr_rtf": 0.2, "kld": 1.5}
    verdict = compare_metrics(recorded, rebuilt)
    assert verdict.equal == {"ppl": 30.0} and verdict.differ == {"kld": (1.0, 1.5)}
    assert set(verdict.timings) == {"ttft_ms", "decode_tok_per_s", "asr_rtf"}


def test_timing_names():
    timing = ["ttft_ms", "decode_tok_per_s_p50", "asr_host_rtf_fp32", "calib_build_s",
              "quantize_peak_rss_mb", "asr_host_rtf_speedup", "asr_decoder_ms_mean_fp32"]  # fmt: skip
    stable = ["ppl", "ppl_delta_pct", "size_mb", "asr_wer", "kld_mean", "calib_records"]
    assert all(map(is_timing, timing)) and not any(map(is_timing, stable))


def git(root: Path, *args: str) -> str:
    return subprocess.run(
        ["git", "-c", "user.email=t@t", "-c", "user.name=t", *args],
        cwd=root, check=True, capture_output=True, text=True,
    ).stdout.strip()  # fmt: skip


def test_dirty_means_code_changed_not_params_lock_or_outputs(tmp_path):
    git(tmp_path, "init", "-q")
    for name in ("code.py", "params.yaml", "dvc.lock", "metrics/a.json"):
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_text("v1\n")
    git(tmp_path, "add", "-A")
    git(tmp_path, "commit", "-qm", "init")
    for name in ("params.yaml", "dvc.lock", "metrics/a.json"):
        (tmp_path / name).write_text("v2\n")
    state = git_state(tmp_path, ignore=("metrics/a.json",))
    assert state["git.dirty"] == "false" and state["git.sha"] == git(tmp_path, "rev-parse", "HEAD")
    (tmp_path / "code.py").write_text("v2\n")
    state = git_state(tmp_path, ignore=("metrics",))
    assert state["git.dirty"] == "true" and state["git.dirty_files"] == "code.py"
    assert changed_files(tmp_path, "HEAD") == [
        "code.py",
        "dvc.lock",
        "metrics/a.json",
        "params.yaml",
    ]
    assert git_state(tmp_path / "metrics" / "..", baseline="nope")["git.sha"] == "unknown"


DVC_REPO_YAML = """
stages:
  a:
    cmd: python -c "import os; os.makedirs('models/m', exist_ok=True); open('models/m/w.bin', 'wb').write(b'\\\\x00\\\\x01'); open('models/m/x.txt', 'w').write('x'); open('metrics/a.json', 'w').write('{}')"
    outs:
      - models/m
    metrics:
      - metrics/a.json:
          cache: false
"""


def built_dvc_repo(root: Path) -> dict[str, str]:
    """A git + DVC repository at ``root`` whose one stage (DVC_REPO_YAML) has run; returns
    the environment that finds this interpreter's ``dvc``."""
    import os
    import sys

    env = os.environ | {"PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}"}
    for cmd in (["git", "init", "-q"], ["dvc", "init", "-q"]):
        subprocess.run(cmd, cwd=root, check=True, env=env)
    (root / "dvc.yaml").write_text(DVC_REPO_YAML)
    (root / "metrics").mkdir()
    subprocess.run(["dvc", "repro", "-q"], cwd=root, check=True, env=env, timeout=300)
    return env


def test_the_record_takes_dvcs_digests_from_the_lock_instead_of_hashing_again(
    tmp_path, monkeypatch
):
    import hashlib

    from rkpipe.reproduce import record

    built_dvc_repo(tmp_path)

    def rehashed(path, algorithm):
        raise AssertionError(f"{path} was hashed again although dvc.lock has its digest")

    monkeypatch.setattr(record, "_file_digest", rehashed)
    got = output_record(tmp_path, {})
    assert got["hash"] == "md5"
    expected = {
        name: hashlib.md5((tmp_path / name).read_bytes()).hexdigest()
        for name in ("metrics/a.json", "models/m/w.bin", "models/m/x.txt")
    }
    assert got["files"] == expected  # DVC's md5 is the file's md5: a rebuild can recompute it
    monkeypatch.undo()
    # a record made before records used DVC's digests holds sha256s: compared the old way
    legacy = output_record(tmp_path, {}, "sha256")
    assert "hash" not in legacy
    assert legacy["files"]["models/m/w.bin"] == hashlib.sha256(b"\x00\x01").hexdigest()


def test_models_are_referenced_by_lock_digest_and_remote_not_copied(tmp_path):
    from rkpipe.reproduce.record import model_references

    env = built_dvc_repo(tmp_path)
    assert [m["remote"] for m in model_references(tmp_path, "models")] == [None]
    remote = "ssh://team:s3cret@storage.lan/srv/dvc"
    add = ["dvc", "remote", "add", "-d", "storage", remote]
    subprocess.run(add, cwd=tmp_path, check=True, env=env)
    (reference,) = model_references(tmp_path, "models")
    assert reference["path"] == "models/m" and reference["md5"].endswith(".dir")
    assert reference["nfiles"] == 2 and reference["size"] == 3
    assert "s3cret" not in reference["remote"] and "storage.lan/srv/dvc" in reference["remote"]
