"""The project's DVC remote, where a team shares models (``dvc push`` / ``dvc pull``).

An SSH remote goes through the dvc-ssh plugin (asyncssh), which reads ``~/.ssh/known_hosts``
but, as measured here with dvc-ssh 4.3 and asyncssh 2.24, pushes to a host whose key is not
in it (an empty known_hosts let ``dvc push`` through). Boards refuse an unknown host key, so
the remote does too: the preflight stage checks its key against ``~/.ssh/known_hosts`` before
any stage runs, and says how to trust it after checking the fingerprint.
"""

from __future__ import annotations

import getpass
import logging
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from rkpipe.errors import RemoteError

log = logging.getLogger(__name__)


def default_remote(root: Path) -> tuple[str, str] | None:
    """``(name, url)`` of the repository's default DVC remote, or None (no repo, no remote)."""
    found = remote_settings(root)
    return (found[0], str(found[1]["url"])) if found else None


def remote_settings(root: Path) -> tuple[str, dict[str, Any]] | None:
    """``(name, settings)`` of the default DVC remote (url, user, port, keyfile, ... merged
    from .dvc/config and config.local), or None (no repo, no remote)."""
    from dvc.repo import Repo

    try:
        with Repo(str(root)) as repo:
            name = repo.config["core"].get("remote")
            return (name, dict(repo.config["remote"][name])) if name else None
    except Exception:  # noqa: BLE001 - no DVC repo or no remote: nothing to share through
        log.debug("no DVC remote for %s", root, exc_info=True)
        return None


class RemoteUnreachable(RemoteError):
    """The remote's host does not answer (no network, host down): push and pull would fail,
    but the pipeline itself does not need the remote."""


def check_remote(root: Path, timeout: float = 5.0) -> None:
    """The default SSH remote presents its known host key (:func:`check_remote_host_key`) and
    accepts the login DVC will use (:func:`check_remote_login`); other remotes pass. A remote
    that cannot be reached is logged as a warning, not raised."""
    try:
        check_remote_host_key(root, timeout)
        check_remote_login(root, timeout)
    except RemoteUnreachable as exc:
        log.warning("%s; dvc push and pull will fail until it answers", exc)


def check_remote_login(root: Path, timeout: float = 5.0) -> None:
    """Raise :class:`RemoteError` when the default ``ssh://`` remote refuses the user and key
    DVC will log in with (its ``keyfile``, else the agent's and ~/.ssh's keys, as asyncssh)."""
    import paramiko

    from rkpipe.secrets import redact_uri

    found = remote_settings(root)
    if found is None or urlsplit(str(found[1]["url"])).scheme != "ssh":
        return
    name, settings = found
    parts = urlsplit(str(settings["url"]))
    host, port = parts.hostname or "", int(settings.get("port") or parts.port or 22)
    user = settings.get("user") or parts.username or getpass.getuser()
    keyfile = settings.get("keyfile")
    client = paramiko.SSHClient()
    client.set_missing_host_key_policy(paramiko.RejectPolicy())  # the key was checked first
    client.load_host_keys(str(known_hosts_file()))
    try:
        client.connect(
            host, port, username=user, key_filename=keyfile, timeout=timeout,
            banner_timeout=timeout, auth_timeout=timeout, allow_agent=not keyfile,
            look_for_keys=not keyfile, password=settings.get("password"),
        )  # fmt: skip
    except paramiko.AuthenticationException as exc:
        key = f"the key {keyfile}" if keyfile else "the keys of the SSH agent and ~/.ssh"
        raise RemoteError(
            f"DVC remote {name} ({redact_uri(str(settings['url']))}) refuses {key} for user "
            f"{user} ({exc}); add the public key to ~{user}/.ssh/authorized_keys on {host}, "
            f"or name the right one: dvc remote modify --local {name} keyfile <path>"
        ) from None
    except (OSError, paramiko.SSHException) as exc:
        raise RemoteUnreachable(
            f"DVC remote {name}: cannot log in to {host}:{port}: {exc}"
        ) from None
    finally:
        client.close()


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
        raise RemoteUnreachable(f"{where}: cannot reach {host}:{port}: {exc}") from None
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
