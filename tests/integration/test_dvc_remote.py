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
