"""``rkpipe sweep -j 2`` against a team's tracking server (issue "a team's setup", part 5): real
PostgreSQL and ``mlflow server`` from ``scripts/services.sh``, the real pipeline with
experiment=smoke in a copy of the repository, two variants in DVC's queue at once. Through
MLflow's REST API: one parent, two children linked to it, each with its params, metrics, gate
and models by reference (DVC path and md5, no model copy in the artifact store); and no SQLite
lock file taken, because a server needs none."""

from __future__ import annotations

import json
import re
import sys
from pathlib import Path

import pytest
from repo_copy import copy_repo, run
from tracking_services import NO_POSTGRES, rest, running_services, tags_of

pytestmark = [pytest.mark.integration, pytest.mark.slow, NO_POSTGRES]
SWEEP = ["experiment=smoke", "quant=ort_int8,ort_int8_per_channel", "tracking=server"]


@pytest.fixture(scope="module")
def swept(tmp_path_factory):
    repo = tmp_path_factory.mktemp("server-sweep")
    copy_repo(repo)
    env = {"PYTHONPATH": str(repo / "src"), "PYTHONHASHSEED": "0"}
    with running_services() as (services_env, uri, _):
        out = run(
            [sys.executable, "-m", "rkpipe.cli", "sweep", *SWEEP, f"tracking.uri={uri}", "-j", "2"],
            repo, timeout=3600, env=env,
        )  # fmt: skip
        parent = re.search(r"sweep parent run ([0-9a-f]{32})", out.stdout).group(1)
        runs = rest(uri, "runs/search", {"experiment_ids": [_experiment(uri)], "max_results": 50})
        artifacts = Path(services_env["RKPIPE_SERVICES_DIR"]) / "mlflow-artifacts"
        yield repo, uri, parent, runs["runs"], artifacts


def _experiment(uri: str) -> str:
    return rest(uri, "experiments/get-by-name?experiment_name=rkpipe")["experiment"][
        "experiment_id"
    ]


def test_one_parent_and_two_children_with_their_figures_reach_the_server(swept):
    repo, uri, parent, runs, _ = swept
    by_id = {r["info"]["run_id"]: r for r in runs}
    assert by_id[parent]["info"]["status"] == "FINISHED"
    assert tags_of(by_id[parent])["rkpipe.kind"] == "sweep"
    children = [r for r in runs if tags_of(r).get("mlflow.parentRunId") == parent]
    assert len(children) == 2
    # Hydra's override grammar escapes the URI's colons (http\\://...)
    assert {tags_of(c)["rkpipe.overrides"].replace("\\", "") for c in children} == {
        f"experiment=smoke quant={q} tracking=server tracking.uri={uri}"
        for q in ("ort_int8", "ort_int8_per_channel")
    }
    for child in children:
        tags = tags_of(child)
        metrics = {m["key"]: m["value"] for m in child["data"]["metrics"]}
        params = {p["key"]: p["value"] for p in child["data"]["params"]}
        assert child["info"]["status"] == "FINISHED"
        assert {"ppl", "kld_mean", "ttft_ms", "decode_tok_per_s", "asr_wer"} <= set(metrics)
        assert params["quant.backend"] == "onnxruntime" and tags["gate"] in ("passed", "failed")
        assert all(tags[f"rkpipe.stage.{s}"] == "finished" for s in ("evaluate", "deploy_bench"))
        # the models by reference: DVC path and md5 from the variant's dvc.lock
        refs = [k for k in tags if k.startswith("model.models/") and k.endswith(".md5")]
        assert "model.models/llm/quantized.md5" in refs
        assert re.fullmatch(r"[0-9a-f]{32}\.dir", tags["model.models/llm/quantized.md5"])
    assert not list(repo.rglob("mlflow.db.lock")) and not (repo / ".mlflow").exists()


def test_the_artifact_store_holds_no_model_copy(swept):
    _, _, _, _, artifacts = swept
    files = [p for p in artifacts.rglob("*") if p.is_file()]
    assert files, "no artifact reached the server's store"
    total_mb = sum(p.stat().st_size for p in files) / 1e6
    assert not [p for p in files if p.suffix in (".onnx", ".rkllm", ".gguf", ".safetensors")]
    references = [p for p in files if p.name == "references.json"]
    assert len(references) == 2 and all(json.loads(p.read_text()) for p in references)
    print(f"artifact store: {len(files)} files, {total_mb:.2f} MB for 2 variants + parent")
