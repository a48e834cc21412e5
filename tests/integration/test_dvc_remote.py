"""A DVC remote over SSH (the dvc-ssh plugin) on the loopback sshd that plays the board: a stage's
outputs pushed, pulled into a fresh clone byte for byte (their md5s match dvc.lock), and an
unknown host key refused, as for boards. Real DVC, real sshd."""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
from pathlib import Path

import pytest

from rkpipe.reproduce.record import lock_digests, model_references

pytestmark = pytest.mark.integration
DVC_YAML = """
stages:
  build:
    cmd: python -c "import os; os.makedirs('models/m', exist_ok=True); open('models/m/w.bin', 'wb').write(os.urandom(300000)); open('models/m/cfg.json', 'w').write('{}')"
    outs:
      - models/m
"""


def run(argv, cwd: Path, env: dict[str, str], check: bool = True):
    out = subprocess.run(argv, cwd=cwd, env=env, capture_output=True, text=True, timeout=300)
    if check and out.returncode != 0:
        raise AssertionError(f"{' '.join(argv)} failed:\n{out.stdout}\n{out.stderr}")
    return out


@pytest.fixture()
def remote_repo(loopback_sshd, tmp_path):
    """A DVC repo with one built stage and an SSH remote on the loopback sshd; HOME holds the
    known_hosts line a team member writes after checking the fingerprint."""
    home = tmp_path / "home"
    (home / ".ssh").mkdir(parents=True)
    (home / ".ssh" / "known_hosts").write_text(loopback_sshd.known_hosts_line())
    env = os.environ | {
        "HOME": str(home),
        "PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}",
        "GIT_AUTHOR_NAME": "t", "GIT_AUTHOR_EMAIL": "t@t", "GIT_COMMITTER_NAME": "t",
        "GIT_COMMITTER_EMAIL": "t@t",
    }  # fmt: skip
    repo = tmp_path / "repo"
    repo.mkdir()
    storage = tmp_path / "storage"
    url = f"ssh://{loopback_sshd.user}@127.0.0.1:{loopback_sshd.port}{storage}"
    for argv in (
        ["git", "init", "-q"], ["dvc", "init", "-q"],
        ["dvc", "remote", "add", "-d", "storage", url],
        # the key stays out of git: .dvc/config.local
        ["dvc", "remote", "modify", "--local", "storage", "keyfile", str(loopback_sshd.key_file)],
    ):  # fmt: skip
        run(argv, repo, env)
    (repo / "dvc.yaml").write_text(DVC_YAML)
    run(["dvc", "repro", "-q"], repo, env)
    run(["git", "add", "-A"], repo, env)
    run(["git", "commit", "-qm", "built"], repo, env)
    return repo, env, storage, url


def test_push_then_pull_into_a_fresh_clone_gives_the_locked_bytes(remote_repo, tmp_path):
    repo, env, storage, url = remote_repo
    run(["dvc", "push", "-q"], repo, env)
    assert any(p.is_file() for p in (storage / "files" / "md5").rglob("*"))
    clone = tmp_path / "clone"
    run(["git", "clone", "-q", str(repo), str(clone)], tmp_path, env)
    local = repo / ".dvc" / "config.local"  # not in git: each member configures the key
    (clone / ".dvc" / "config.local").write_text(local.read_text())
    assert not (clone / "models" / "m").exists()
    run(["dvc", "pull", "-q"], clone, env)
    locked = lock_digests(clone)
    for name in ("models/m/w.bin", "models/m/cfg.json"):
        assert hashlib.md5((clone / name).read_bytes()).hexdigest() == locked[name]
        assert (clone / name).read_bytes() == (repo / name).read_bytes()
    # the variant's run references the model on this remote (the user name masked)
    (reference,) = model_references(clone, "models")
    assert reference["path"] == "models/m" and reference["remote"] == url.replace(
        f"//{url.split('//')[1].split('@')[0]}@", "//***@"
    )


def test_the_preflight_refuses_an_unknown_or_changed_host_key(remote_repo, monkeypatch):
    """dvc-ssh pushes to a host whose key is unknown; rkpipe's preflight does not let it."""
    from rkpipe.errors import RemoteError
    from rkpipe.remote import check_remote_host_key

    repo, env, _, _ = remote_repo
    monkeypatch.setenv("HOME", env["HOME"])
    known_hosts = Path(env["HOME"]) / ".ssh" / "known_hosts"
    check_remote_host_key(repo)  # the recorded key: fine
    line = known_hosts.read_text()
    known_hosts.write_text("")
    with pytest.raises(RemoteError) as unknown:
        check_remote_host_key(repo)
    message = str(unknown.value)
    assert "\n" not in message and "unknown host key SHA256:" in message
    assert f"ssh-keyscan -p {line.split(']:')[1].split()[0]} 127.0.0.1 >> {known_hosts}" in message
    other = (
        line.split()[0]
        + " ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIHpKY9wF3n0gJZrj1TxXUXlYQdYb7bH4j0cJ2xq9Vb8c\n"
    )
    known_hosts.write_text(other)
    with pytest.raises(RemoteError, match="host key for 127.0.0.1:.* changed"):
        check_remote_host_key(repo)


def _clone(repo: Path, env: dict[str, str], target: Path) -> Path:
    """A team member's fresh clone: git only, the remote's key in its own config.local."""
    run(["git", "clone", "-q", str(repo), str(target)], target.parent, env)
    local = repo / ".dvc" / "config.local"
    (target / ".dvc" / "config.local").write_text(local.read_text())
    return target


@pytest.fixture()
def recorded_run(remote_repo, tmp_path):
    """The variant's MLflow run as the record stage leaves it: commit, params, output digests
    and its models by reference; the outputs pushed to the SSH remote."""
    from rkpipe.reproduce.record import MODELS_ARTIFACT, output_record
    from rkpipe.tracking.store import Store

    repo, env, storage, url = remote_repo
    run(["dvc", "push", "-q"], repo, env)
    store = Store(uri=f"sqlite:///{tmp_path / 'mlflow.db'}", root=tmp_path)
    sha = run(["git", "rev-parse", "HEAD"], repo, env).stdout.strip()
    run_id = store.create_run("rkpipe", "variant", {"git.sha": sha, "git.dirty": "false"})
    store.log_text(run_id, "paths: {}\n", "dvc/params.yaml")
    store.log_dict(run_id, output_record(repo, {}), "outputs/sha256.json")
    store.log_dict(run_id, model_references(repo, "models"), MODELS_ARTIFACT)
    return repo, env, store, run_id


def test_fetch_brings_a_runs_model_from_the_remote_checked_against_its_md5(
    recorded_run, tmp_path, monkeypatch
):
    from rkpipe.errors import ArtifactError
    from rkpipe.reproduce.fetch import dvc_md5, fetch_model, pick_reference, run_references

    repo, env, store, run_id = recorded_run
    clone = _clone(repo, env, tmp_path / "member")
    monkeypatch.setenv("HOME", env["HOME"])
    reference = pick_reference(run_references(store, run_id), "m")
    fetched = fetch_model(clone, reference, tmp_path / "model")
    assert fetched.source.startswith("DVC remote storage (ssh://***@127.0.0.1:")
    assert (tmp_path / "model" / "w.bin").read_bytes() == (repo / "models/m/w.bin").read_bytes()
    assert dvc_md5(tmp_path / "model") == reference["md5"] == lock_outs_md5(repo, "models/m")
    cli = [sys.executable, "-m", "rkpipe.cli", "fetch", run_id, "--model", "m", "-o", "again",
           "--repo", str(clone), "--tracking-uri", store.uri]  # fmt: skip
    again = run(cli, tmp_path, env)  # now in the clone's cache
    assert (
        f"fetched models/m of run {run_id} (md5 {reference['md5']}, 0.3 MB) from the local "
        "DVC cache into again" in again.stdout
    )
    assert (tmp_path / "again" / "cfg.json").read_text() == "{}"
    with pytest.raises(ArtifactError, match="references no model 'llm'; it references: models/m"):
        pick_reference(run_references(store, run_id), "llm")


def test_fetch_says_what_to_push_when_the_remote_lacks_the_model(
    remote_repo, tmp_path, monkeypatch
):
    from rkpipe.errors import RemoteError
    from rkpipe.reproduce.fetch import fetch_model

    repo, env, _, _ = remote_repo  # built, never pushed
    clone = _clone(repo, env, tmp_path / "member")
    monkeypatch.setenv("HOME", env["HOME"])
    (reference,) = model_references(repo, "models")
    with pytest.raises(RemoteError, match=r"does not hold models/m .*run `dvc push models/m`"):
        fetch_model(clone, reference, tmp_path / "model")
    assert not (tmp_path / "model").exists()


def test_reproduce_on_a_fresh_clone_pulls_from_the_remote_and_says_so(recorded_run, tmp_path):
    """The build writes random bytes: pulled, they match the run; rebuilt, they cannot."""
    repo, env, store, run_id = recorded_run
    clone = _clone(repo, env, tmp_path / "member")
    cli = [sys.executable, "-m", "rkpipe.cli", "reproduce", run_id, "--repo", str(clone),
           "--tracking-uri", store.uri]  # fmt: skip
    pulled = run(cli, clone, env, check=False)
    assert pulled.returncode == 0, pulled.stdout + pulled.stderr
    assert "stages: pulled from DVC remote storage (ssh://***@127.0.0.1:" in pulled.stdout
    assert "  pulled: build" in pulled.stdout and "REPRODUCED" in pulled.stdout
    rebuilt = run([*cli, "--rebuild"], clone, env, check=False)
    assert rebuilt.returncode == 1 and "every stage rebuilt" in rebuilt.stdout
    assert "DIFFERS  models/m/w.bin" in rebuilt.stdout


def lock_outs_md5(repo: Path, path: str) -> str:
    from rkpipe.reproduce.record import lock_outs

    return next(str(o["md5"]) for o in lock_outs(repo) if o["path"] == path)


def test_the_preflight_refuses_a_key_the_remote_does_not_accept(remote_repo, tmp_path, monkeypatch):
    from rkpipe.errors import RemoteError
    from rkpipe.remote import check_remote

    repo, env, _, _ = remote_repo
    monkeypatch.setenv("HOME", env["HOME"])
    check_remote(repo)  # the authorised key logs in
    stranger = tmp_path / "stranger_key"
    run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(stranger)], tmp_path, env)
    run(["dvc", "remote", "modify", "--local", "storage", "keyfile", str(stranger)], repo, env)
    with pytest.raises(RemoteError) as refused:
        check_remote(repo)
    message = str(refused.value)
    assert "\n" not in message and f"refuses the key {stranger} for user" in message
    assert "dvc remote modify --local storage keyfile <path>" in message


def test_an_unreachable_remote_is_a_warning_not_a_failure(remote_repo, monkeypatch, caplog):
    from tracking_services import free_port

    from rkpipe.remote import check_remote

    repo, env, storage, _ = remote_repo
    monkeypatch.setenv("HOME", env["HOME"])
    closed = f"ssh://me@127.0.0.1:{free_port()}{storage}"
    run(["dvc", "remote", "modify", "storage", "url", closed], repo, env)
    check_remote(repo)  # dvc repro does not need the remote
    assert "cannot reach 127.0.0.1" in caplog.text and "dvc push and pull will fail" in caplog.text
