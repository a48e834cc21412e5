"""The ``rkpipe board trust`` command line that records a board's host key, for the refusals
of an unknown or changed key to print.

``rkpipe board trust OPTION`` composes ``board=OPTION``: OPTION names a ``conf/board/*.yaml``
file, not the board's ``name:`` (``rk3588_ssh.yaml`` holds ``name: rk3588-evb``), and the
BoardConfig a stage reads from params.yaml no longer says which file it came from. So the
file is looked up by that name; where the board differs from the file in what trusting uses
(host, port, known_hosts: a ``board.host=...`` given to ``rkpipe params``), the command
repeats those as overrides, so it records the key of the host that was refused, in the file
that was read.
"""

from __future__ import annotations

import dataclasses
import logging
import re
import shlex
from pathlib import Path
from typing import Any

from rkpipe.config.schema import BoardConfig

log = logging.getLogger(__name__)

CONFIG_DIR = Path("conf")  # where the CLI composes from (its --config-dir default; the repo)
TRUST_FIELDS = ("host", "port", "known_hosts")  # what `rkpipe board trust` reads of a board
_PLAIN_VALUE = re.compile(r"[\w./~:@+-]+")  # a Hydra override value that needs no quotes


def trust_command(board: BoardConfig, config_dir: Path = CONFIG_DIR) -> str:
    """The shell command that trusts ``board``'s host key:
    ``rkpipe board trust <option> [board.host=... board.port=... board.known_hosts=...]``.

    The option is the ``<config_dir>/board/*.yaml`` whose ``name:`` is ``board.name`` (the one
    needing fewest overrides if several); failing that, one of the same transport, with the
    overrides that point it at this board. ``rkpipe board trust <board.name>`` when there is
    no board config at all (run from elsewhere than the project directory).
    """
    options = board_options(config_dir)
    named = {k: v for k, v in options.items() if v.get("name") == board.name}
    same_transport = {k: v for k, v in options.items() if v.get("transport") == board.transport}
    candidates = named or same_transport
    if not candidates:
        return f"rkpipe board trust {shlex.quote(board.name)}"
    option = min(candidates, key=lambda k: (len(trust_overrides(board, candidates[k])), k))
    overrides = trust_overrides(board, candidates[option])
    return shlex.join(["rkpipe", "board", "trust", option, *overrides])


def board_options(config_dir: Path = CONFIG_DIR) -> dict[str, dict[str, Any]]:
    """The ``board`` group's options (``rk3588_ssh``, ``lab/evb1`` ...) and their YAML content;
    unreadable files are skipped (this only words a hint)."""
    import yaml

    group = Path(config_dir) / "board"
    options = {}
    for path in sorted(group.rglob("*.yaml")):
        try:
            data = yaml.safe_load(path.read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, yaml.YAMLError) as exc:
            log.debug("skipping %s for the trust hint: %s", path, exc)
            continue
        if isinstance(data, dict):
            options[path.relative_to(group).with_suffix("").as_posix()] = data
    return options


def trust_overrides(board: BoardConfig, option: dict[str, Any]) -> list[str]:
    """``board.<field>=<value>`` for each field trusting uses where ``board`` differs from the
    option's file (its schema default where the file leaves it out)."""
    defaults = {f.name: f.default for f in dataclasses.fields(BoardConfig)}
    overrides = []
    for name in TRUST_FIELDS:
        want, written = getattr(board, name), option.get(name, defaults[name])
        if _effective(name, want) != _effective(name, written):
            overrides.append(f"board.{name}={_hydra_value(want)}")
    return overrides


def _effective(name: str, value: Any) -> Any:
    """What a value means: unset known_hosts is ~/.ssh/known_hosts, and ~ is the home."""
    if name == "known_hosts":
        return str(Path(value or "~/.ssh/known_hosts").expanduser())
    return value


def _hydra_value(value: Any) -> str:
    """``value`` as a Hydra override writes it (null, plain, or single-quoted)."""
    if value is None:
        return "null"
    text = str(value)
    if _PLAIN_VALUE.fullmatch(text):
        return text
    return "'" + text.replace("\\", "\\\\").replace("'", "\\'") + "'"
