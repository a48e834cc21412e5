"""The project's DVC remote, where a team shares models (``dvc push`` / ``dvc pull``).

An SSH remote goes through the dvc-ssh plugin (asyncssh), which reads ``~/.ssh/known_hosts``
but, as measured here with dvc-ssh 4.3 and asyncssh 2.24, pushes to a host whose key is not
in it (an empty known_hosts let ``dvc push`` through). Boards refuse an unknown host key, so
the remote does too: the preflight stage checks its key against ``~/.ssh/known_hosts`` before
any stage runs, and says how to trust it after checking the fingerprint.
"""

from __future__ import annotations

import logging
from pathlib import Path
from urllib.parse import urlsplit

from rkpipe.errors import RemoteError

log = logging.getLogger(__name__)


def default_remote(root: Path) -> tuple[str, str] | None:
    """``(name, url)`` of the repository's default DVC remote, or None (no repo, no remote)."""
    from dvc.repo import Repo

    try:
        with Repo(str(root)) as repo:
            name = repo.config["core"].get("remote")
            return (name, str(repo.config["remote"][name]["url"])) if name else None
    except Exception:  # noqa: BLE001 - no DVC repo or no remote: nothing to share through
        log.debug("no DVC remote for %s", root, exc_info=True)
        return None


def known_hosts_file() -> Path:
    """The file dvc-ssh (asyncssh) reads host keys from."""
    return Path.home() / ".ssh" / "known_hosts"


def check_remote_host_key(root: Path, timeout: float = 5.0) -> None:
    """Raise :class:`RemoteError` when the default remote is ``ssh://`` and the key its host
    presents is not the one ``~/.ssh/known_hosts`` records for it."""
    import paramiko

    from rkpipe.board.host_keys import fingerprint, known_hosts_name, presented_key
    from rkpipe.secrets import redact_uri

    remote = default_remote(root)
    if remote is None or urlsplit(remote[1]).scheme != "ssh":
        return
    name, url = remote
    parts = urlsplit(url)
    host, port = parts.hostname or "", parts.port or 22
    where = f"DVC remote {name} ({redact_uri(url)})"
    try:
        key = presented_key(host, port, timeout)
    except (OSError, paramiko.SSHException) as exc:
        raise RemoteError(f"{where}: cannot reach {host}:{port}: {exc}") from None
    path = known_hosts_file()
    known = paramiko.HostKeys(str(path)) if path.exists() else paramiko.HostKeys()
    entry = known.lookup(known_hosts_name(host, port)) or {}
    recorded = entry.get(key.get_name())
    if recorded is None:
        scan = (
            f"ssh-keyscan -p {port} {host} >> {path}"
            if port != 22
            else f"ssh-keyscan {host} >> {path}"
        )
        raise RemoteError(
            f"{where}: unknown host key {fingerprint(key)} ({key.get_name()}) for {host}:{port}; "
            f"after checking that fingerprint on the storage host, trust it with: {scan}"
        )
    if recorded != key:
        raise RemoteError(
            f"{where}: host key for {host}:{port} changed: {path} has {fingerprint(recorded)} "
            f"but the host presents {fingerprint(key)}; if the host was reinstalled, delete its "
            "line from known_hosts and trust the new key, otherwise someone may be intercepting"
        )
