"""SshTransport, preflight and the runners against a real OpenSSH server on 127.0.0.1."""

from __future__ import annotations

import hashlib
import json
import os
import shlex
import signal
import statistics
import subprocess
import sys
import time
from pathlib import Path

import pytest
from board_fixture import load_fake_runtime_builder, write_board_root, write_fake_sysfs

from rkpipe.board.clocks import pin_frequency
from rkpipe.board.deploy import bench_llm, parse_json_lines
from rkpipe.board.host_keys import trust_host
from rkpipe.board.preflight import preflight
from rkpipe.board.ssh import CHUNK_BYTES, SshTransport
from rkpipe.config.schema import BenchConfig
from rkpipe.errors import BoardError

pytestmark = pytest.mark.integration
# The system Python (no rkpipe installed) when there is one: what a board has.
BARE_PYTHON = "/usr/bin/python3" if Path("/usr/bin/python3").is_file() else sys.executable

HOSTILE_NAMES = [
    "a b.txt", "it's.txt", 'say "hi".txt', "$(touch PWNED).txt", "`touch PWNED`.txt",
    ";rm -rf x.txt", "-rf", "back\\slash", "new\nline", "ünï cødé.bin",
]  # fmt: skip


def ssh_keygen_fingerprint(pub: Path) -> str:
    out = subprocess.run(
        ["ssh-keygen", "-lf", str(pub)], capture_output=True, text=True, check=True
    )
    return out.stdout.split()[1]


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


# ------------------------------------------------------------------ host keys


def test_unknown_host_key_is_refused_with_its_fingerprint(loopback_sshd, tmp_path):
    board = loopback_sshd.board(tmp_path / "known_hosts", tmp_path / "wd")
    expected = ssh_keygen_fingerprint(loopback_sshd.host_key_pub)
    with SshTransport(board) as transport, pytest.raises(BoardError) as err:
        transport.run(["true"], 10)
    # No conf/board/*.yaml is named "loopback": the ssh one, pointed at this board, trusts it.
    trust = shlex.join([
        "rkpipe", "board", "trust", "rk3588_ssh", "board.host=127.0.0.1",
        f"board.port={loopback_sshd.port}", f"board.known_hosts={tmp_path / 'known_hosts'}",
    ])  # fmt: skip
    assert str(err.value).startswith(
        f"unknown host key for 127.0.0.1:{loopback_sshd.port}; run `{trust}` "
        f"after checking the fingerprint {expected}"
    )


def test_trust_then_connect(loopback_sshd, tmp_path):
    known = tmp_path / "ssh" / "known_hosts"
    board = loopback_sshd.board(known, tmp_path / "wd")
    assert trust_host(board) == ssh_keygen_fingerprint(loopback_sshd.host_key_pub)
    assert trust_host(board) == ssh_keygen_fingerprint(loopback_sshd.host_key_pub)
    assert known.read_text() == loopback_sshd.known_hosts_line()  # recorded once
    with SshTransport(board) as transport:
        assert transport.run(["echo", "ok"], 10).stdout == "ok\n"


def test_changed_host_key_is_refused_naming_both(loopback_sshd, tmp_path):
    other = tmp_path / "other_key"
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(other)], check=True)
    key_type, key_b64 = Path(f"{other}.pub").read_text().split()[:2]
    known = tmp_path / "known_hosts"
    known.write_text(f"[127.0.0.1]:{loopback_sshd.port} {key_type} {key_b64}\n")
    board = loopback_sshd.board(known, tmp_path / "wd")
    old, new = (
        ssh_keygen_fingerprint(Path(f"{other}.pub")),
        ssh_keygen_fingerprint(loopback_sshd.host_key_pub),
    )
    with SshTransport(board) as transport, pytest.raises(BoardError, match="changed") as err:
        transport.run(["true"], 10)
    assert old in str(err.value) and new in str(err.value)
    with pytest.raises(BoardError, match="changed"):
        trust_host(board)


# ------------------------------------------------------------------ commands


def test_run_quotes_every_argument_and_splits_streams(ssh_board, tmp_path):
    args = ["$(id)", "a b", "'q'", '"dq"', ";rm -rf x", "`id`", "*", "new\nline", ""]
    with SshTransport(ssh_board) as transport:
        out = transport.run(["printf", "%s\\0", *args], 10)
        assert out.stdout.split("\0")[:-1] == args
        result = transport.run(["sh", "-c", "echo out; echo err >&2; exit 3"], 10)
    assert (result.returncode, result.stdout, result.stderr) == (3, "out\n", "err\n")


def test_run_times_out_and_the_transport_recovers(ssh_board):
    with SshTransport(ssh_board) as transport:
        start = time.monotonic()
        with pytest.raises(BoardError, match="timed out after"):
            transport.run(["sleep", "5"], 0.5)
        assert time.monotonic() - start < 3
        assert transport.run(["echo", "still here"], 10).stdout == "still here\n"


# ------------------------------------------------------------------ push


def test_hostile_names_are_pushed_listed_and_skipped(ssh_board, tmp_path):
    local = tmp_path / "model dir"
    (local / "sub dir").mkdir(parents=True)
    for i, name in enumerate(HOSTILE_NAMES):
        (local / ("sub dir" if i % 2 else "") / name).write_bytes(f"payload {i}\n".encode())
    chunks: list[int] = []
    with SshTransport(ssh_board, on_chunk=chunks.append) as transport:
        remote = transport.push(local)
        listing = transport.check(["find", remote, "-type", "f", "-print0"])
        got = {os.path.relpath(p, remote) for p in listing.split("\0") if p}
        want = {str(p.relative_to(local)) for p in local.rglob("*") if p.is_file()}
        assert got == want and len(got) == len(HOSTILE_NAMES)
        for path in local.rglob("*"):
            if path.is_file():
                assert transport.remote_sha256(f"{remote}/{path.relative_to(local)}") == sha256(
                    path
                )
        uploads = len(chunks)
        assert transport.push(local) == remote and len(chunks) == uploads  # content-addressed skip
        (local / "-rf").unlink()
        transport.push(local)
        assert transport.run(["test", "-e", f"{remote}/-rf"], 10).returncode == 1  # stale removed
    assert (
        not list(Path(ssh_board.workdir).rglob("PWNED*"))
        and not Path("~/PWNED").expanduser().exists()
    )


def test_push_resumes_after_the_connection_is_killed(ssh_board, loopback_sshd, tmp_path):
    local = tmp_path / "weights ;$(x).bin"
    local.write_bytes(os.urandom(6 * 1024 * 1024))
    total = local.stat().st_size
    partial = Path(ssh_board.workdir) / ".partial" / f"{local.name}.{sha256(local)}"

    def kill_sessions(done: int) -> None:
        """Once 2 MB are sent and 1 MB has landed on the board, SIGKILL the server side."""
        if done < 2 * 1024 * 1024 or killed:
            return
        deadline = time.monotonic() + 10
        while partial.stat().st_size < 1024 * 1024 and time.monotonic() < deadline:
            time.sleep(0.01)
        killed.extend(loopback_sshd.session_pids())
        for pid in killed:
            os.kill(pid, signal.SIGKILL)

    killed: list[int] = []
    with SshTransport(ssh_board, on_chunk=kill_sessions) as transport:
        with pytest.raises(BoardError, match="connection lost|lost the connection"):
            transport.push(local)
    assert killed
    kept = partial.stat().st_size
    assert 0 < kept < total
    resumed: list[int] = []
    with SshTransport(ssh_board, on_chunk=resumed.append) as transport:
        remote = transport.push(local)
        assert transport.remote_sha256(remote) == sha256(local)
    assert resumed[0] == min(kept + CHUNK_BYTES, total)  # appended from the partial's size
    assert Path(remote).read_bytes() == local.read_bytes() and not partial.exists()


# ------------------------------------------------------------------ preflight


@pytest.fixture(scope="module")
def runtimes(tmp_path_factory) -> dict[str, Path]:
    build = load_fake_runtime_builder()
    root = tmp_path_factory.mktemp("runtimes")
    return {v: build.build_fake_runtime(root / v, "1.2", version=v) for v in ("1.2.3", "1.2.1")}


def run_preflight(board, root: Path, lib: Path, **kwargs):
    kwargs = {
        "model_platform": "rk3588",
        "toolkit_version": "1.2.3",
        "model_size_mb": 100.0,
    } | kwargs
    with SshTransport(board, python=sys.executable) as transport:
        return preflight(
            transport, board_root=str(root), workdir=board.workdir, runtime_lib=str(lib), **kwargs
        )


def test_preflight_reads_the_board(ssh_board, board_root, runtimes):
    facts = run_preflight(ssh_board, board_root, runtimes["1.2.3"])
    assert (facts["soc"], facts["driver_version"], facts["runtime_version"]) == (
        "rk3588",
        "0.9.8",
        "1.2.3",
    )
    assert facts["compatible"] == "rockchip,rk3588-evb, rockchip,rk3588"
    assert facts["mem_available_mb"] == pytest.approx(8_000_000 * 1024 / 1e6)
    assert facts["free_disk_mb"] > 100


def test_preflight_refuses_the_wrong_soc(ssh_board, board_root, runtimes):
    with pytest.raises(BoardError, match="model built for rk3576 but board is rk3588"):
        run_preflight(ssh_board, board_root, runtimes["1.2.3"], model_platform="RK3576")


def test_preflight_refuses_an_old_driver(ssh_board, tmp_path, runtimes):
    root = write_board_root(tmp_path / "root", driver="RKNPU driver: v0.9.6\n")
    with pytest.raises(
        BoardError, match=r"upgrade the NPU driver to >= 0.9.8; rknn-llm issues #97 #103"
    ):
        run_preflight(ssh_board, root, runtimes["1.2.3"])


def test_preflight_refuses_a_runtime_toolkit_mismatch(ssh_board, board_root, runtimes):
    expected = (
        "the model was exported with rkllm-toolkit 1.3.0 but the board runs librkllmrt 1.2.1: "
        "upgrade the runtime to 1.3.0 (rknn-llm #129, #534)"
    )
    with pytest.raises(BoardError) as err:
        run_preflight(ssh_board, board_root, runtimes["1.2.1"], toolkit_version="1.3.0")
    assert expected in str(err.value)


def test_preflight_refuses_too_little_memory(ssh_board, tmp_path, runtimes):
    root = write_board_root(tmp_path / "root", mem_available_kb=100_000)
    with pytest.raises(
        BoardError, match=r"not enough memory: 102.4 MB available .* need about 600.0 MB"
    ):
        run_preflight(ssh_board, root, runtimes["1.2.3"], model_size_mb=500.0)


@pytest.fixture
def tiny_tmpfs(tmp_path):
    """A 1 MB tmpfs: a real file system that is really full (needs mount rights)."""
    mnt = tmp_path / "tiny fs"
    mnt.mkdir()
    out = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(mnt)], capture_output=True
    )
    if out.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {out.stderr.decode().strip()}")
    yield mnt
    subprocess.run(["umount", str(mnt)], check=True)


def test_preflight_refuses_too_little_disk(
    loopback_sshd, trusted_known_hosts, board_root, runtimes, tiny_tmpfs
):
    board = loopback_sshd.board(trusted_known_hosts, tiny_tmpfs / "wd")
    with pytest.raises(
        BoardError, match=r"not enough disk in .*tiny fs/wd: 1.0 MB free, need 114.0 MB"
    ):
        run_preflight(board, board_root, runtimes["1.2.3"], model_size_mb=50.0)


def test_pin_frequency_writes_each_maximum(ssh_board, board_root):
    write_fake_sysfs(board_root, "rk3588")
    with SshTransport(ssh_board) as transport:
        changed = pin_frequency(transport, "rk3588", board_root=str(board_root))
    npu, cpu = "/sys/class/devfreq/fdab0000.npu", "/sys/devices/system/cpu"
    assert changed[f"{npu}/userspace/set_freq"] == "1000000000"
    assert changed[f"{cpu}/cpufreq/policy6/scaling_setspeed"] == "1800000"
    assert len(changed) == 8 + 3 * 2 + 2 * 2  # idle states, 3 CPU policies, NPU, DDR
    for path, value in changed.items():
        assert (board_root / path.lstrip("/")).read_text() == value + "\n"


# ------------------------------------------------------------------ runners over SSH


def test_rkllm_runner_over_ssh_matches_injected_timings(ssh_board, runtimes, tmp_path):
    """The runner alone, under a Python without rkpipe: it is self-contained."""
    model = tmp_path / "tiny.rkllm"
    model.write_bytes(b"fake")
    with SshTransport(ssh_board, python=BARE_PYTHON) as transport:
        argv = ["env", "FAKE_PREFILL_MS=200", "FAKE_DECODE_MS_PER_TOKEN=20"]
        argv += transport.runner_command("rkllm_runner") + [
            "--lib", str(runtimes["1.2.3"]), "--model", transport.model_path(model),
            "--prompt-tokens", "16", "--new-tokens", "11", "--warmup", "1", "--repetitions", "3",
        ]  # fmt: skip
        result = transport.run(argv, 60)
    assert result.returncode == 0, result.stderr
    rows = [r for r in parse_json_lines(result.stdout) if not r["warmup"]]
    assert statistics.median(r["ttft_ms"] for r in rows) == pytest.approx(200, rel=0.01)
    assert statistics.median(r["decode_tok_per_s"] for r in rows) == pytest.approx(50, rel=0.01)
    assert {r["perf_source"] for r in rows} == {"perf_stat"}


@pytest.fixture(scope="module")
def tiny_onnx_llm(tmp_path_factory) -> Path:
    transformers = pytest.importorskip("transformers")
    torch = pytest.importorskip("torch")
    pytest.importorskip("optimum.exporters.onnx")
    from rkpipe.llm.export import export_fp32_onnx

    config = transformers.LlamaConfig(
        vocab_size=256, hidden_size=32, intermediate_size=64, num_hidden_layers=1,
        num_attention_heads=2, num_key_value_heads=1, max_position_embeddings=128,
    )  # fmt: skip
    torch.manual_seed(0)
    root = tmp_path_factory.mktemp("tiny_llama")
    transformers.LlamaForCausalLM(config).eval().save_pretrained(root / "float")
    export_fp32_onnx(root / "float", root / "onnx")
    from rkpipe.backends.onnxruntime import RUN_WITH  # what the backend's manifest says

    manifest = {"run_with": RUN_WITH.as_dict()}
    (root / "onnx" / "quant_manifest.json").write_text(json.dumps(manifest))
    return root / "onnx"


def test_ort_llm_runner_runs_over_ssh(ssh_board, tiny_onnx_llm):
    bench = BenchConfig(prompt_tokens=8, new_tokens=4, warmup=1, repetitions=2, threads=1)
    with SshTransport(ssh_board, python=sys.executable) as transport:
        result = bench_llm(transport, tiny_onnx_llm, bench, timeout=120)
        assert (
            transport.run(["test", "-f", f"{ssh_board.workdir}/runners/ort_llm.py"], 10).returncode
            == 0
        )
    assert [r["warmup"] for r in result.samples] == [True, False, False]
    assert all(r["kind"] == "llm" and r["decode_tokens"] == 3 for r in result.samples)
    assert result.metrics["decode_tok_per_s"] > 0 and result.metrics["peak_rss_mb"] > 0
    json.dumps(result.samples)  # rows survive the round trip as plain JSON


# ------------------------------------------------------------------ accuracy on the board


@pytest.fixture(scope="module")
def tiny_reference(tiny_onnx_llm, tmp_path_factory) -> Path:
    """A float reference from a differently seeded twin of tiny_onnx_llm (same vocab), so the
    candidate has a real PPL delta, KLD and top-1 disagreement to reproduce on the board."""
    import numpy as np
    import transformers

    from rkpipe.evaluate.llm import build_reference, load_onnx_llm, save_reference
    from rkpipe.llm.export import export_fp32_onnx

    torch = pytest.importorskip("torch")
    root = tmp_path_factory.mktemp("tiny_reference")
    config = transformers.LlamaConfig.from_pretrained(tiny_onnx_llm)
    torch.manual_seed(1)
    transformers.LlamaForCausalLM(config).eval().save_pretrained(root / "float")
    export_fp32_onnx(root / "float", root / "onnx")
    ids = np.random.RandomState(0).randint(0, 256, size=3 * 96).tolist()
    windows = [ids[i : i + 96] for i in range(0, len(ids), 96)]
    reference = build_reference(load_onnx_llm(root / "onnx", threads=1).logits, windows)
    save_reference(reference, root / "reference.npz")
    return root / "reference.npz"


def device_rows(transport, model_dir: Path, threads: int):
    from rkpipe.board.deploy import run_runner

    def run_rows(request: str) -> list[dict]:
        argv = transport.runner_command("ort_llm") + [
            "--model", transport.model_path(model_dir), "--threads", str(threads),
            "--eval-request", request,
        ]  # fmt: skip
        return run_runner(transport, argv, 120)

    return run_rows


def test_device_accuracy_over_ssh_equals_the_host_evaluation(ssh_board, tiny_onnx_llm,
                                                              tiny_reference):  # fmt: skip
    """Same model, same runner, same CPU: the device path adds no error of its own (PPL within
    0.1 %, top-1 within 0.005), and its top-k KLD is a lower bound of the host's full KLD."""
    from rkpipe.evaluate.device import MISSING, evaluate_on_board
    from rkpipe.evaluate.llm import evaluate_against_reference

    host = evaluate_against_reference(tiny_reference, tiny_onnx_llm, threads=1)
    with SshTransport(ssh_board, python=sys.executable) as transport:
        device, reason = evaluate_on_board(
            device_rows(transport, tiny_onnx_llm, 1), transport.model_path, tiny_reference, 32
        )
    assert reason is None and device[MISSING] == 0.0
    assert abs(host["ppl_delta_pct"]) > 1.0 and host["top1_agreement"] < 0.9  # a real difference
    assert device["device_ppl"] == pytest.approx(host["ppl"], rel=1e-3)
    assert abs(device["device_top1_agreement"] - host["top1_agreement"]) <= 0.005
    assert device["device_eval_tokens"] == host["eval_tokens"]
    assert 0 < device["device_kld_mean"] <= host["kld_mean"] * (1 + 1e-6)


def test_an_ssh_drop_during_the_device_evaluation_leaves_it_missing(
    ssh_board, loopback_sshd, tiny_onnx_llm, tiny_reference
):
    import threading

    from rkpipe.evaluate.device import MISSING, evaluate_on_board

    with SshTransport(ssh_board, python=sys.executable) as transport:
        run_rows = device_rows(transport, tiny_onnx_llm, 1)

        def slow_then_dropped(request: str) -> list[dict]:
            # Hold the session open (sleep before the runner), then SIGKILL the server side.
            def drop() -> None:
                time.sleep(1.5)
                for pid in loopback_sshd.session_pids():
                    os.kill(pid, signal.SIGKILL)

            threading.Thread(target=drop, daemon=True).start()
            from rkpipe.board.deploy import run_runner

            return run_runner(transport, ["sh", "-c", "sleep 20; echo {}"], 60) or run_rows(request)

        figures, reason = evaluate_on_board(
            slow_then_dropped, transport.model_path, tiny_reference, 32
        )
    assert figures == {MISSING: 1.0}
    assert reason and "\n" not in reason and ("connection" in reason or "exited" in reason)
