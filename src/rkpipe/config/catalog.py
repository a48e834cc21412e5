"""What ``conf/`` offers: its config groups, each group's options with the one-line description
from the option file's leading comment, and did-you-mean suggestions for a misspelt option.

``rkpipe params --list`` prints this; :func:`rkpipe.config.loader.compose_yaml` asks
:func:`suggest_option` when Hydra cannot find a group option. Reads files only (no Hydra).
"""

from __future__ import annotations

import difflib
import re
from pathlib import Path

DEFAULTS_LINE = re.compile(r"^\s*-\s*(?P<group>[\w/]+)\s*:\s*(?P<option>[\w.-]+)")


def groups(config_dir: Path) -> dict[str, list[str]]:
    """``{group: [option, ...]}`` for every directory of ``config_dir`` holding ``*.yaml``."""
    return {
        d.name: sorted(p.stem for p in d.glob("*.yaml"))
        for d in sorted(Path(config_dir).iterdir())
        if d.is_dir() and any(d.glob("*.yaml"))
    }


def defaults(config_dir: Path) -> dict[str, str]:
    """The default option of each group, from the ``defaults:`` list of ``config.yaml``."""
    text = (Path(config_dir) / "config.yaml").read_text(encoding="utf-8")
    return {m["group"]: m["option"] for m in map(DEFAULTS_LINE.match, text.splitlines()) if m}


def description(option_file: Path, width: int = 100) -> str:
    """The first sentence of the file's leading comment, on one line of at most ``width``
    characters (cut at a word, with "..."); empty when the file starts without a comment."""
    lines = []
    for line in option_file.read_text(encoding="utf-8").splitlines():
        if not line.strip().startswith("#"):
            break
        lines.append(line.strip().lstrip("#").strip())
    text = " ".join(" ".join(lines).split())
    sentence = re.split(r"(?<=\.)\s", text, maxsplit=1)[0]
    if len(sentence) <= width:
        return sentence
    return sentence[: width - 3].rsplit(" ", 1)[0].rstrip(",;:(") + "..."


def describe_groups(config_dir: Path) -> str:
    """One line per group: its default and how many options it has."""
    chosen = defaults(config_dir)
    lines = [f"{'group':12} {'default':30} options"]
    for group, options in groups(config_dir).items():
        lines.append(f"{group:12} {chosen.get(group, '-'):30} {len(options)}")
    lines.append("list a group's options: rkpipe params --list GROUP")
    return "\n".join(lines)


def describe_group(config_dir: Path, group: str) -> str:
    """Every option of ``group`` with its description; the default is starred.

    Raises :class:`ValueError` naming the groups (and the closest one) for an unknown group.
    """
    known = groups(config_dir)
    if group not in known:
        hint = _did_you_mean(group, list(known))
        raise ValueError(f"no config group {group!r}{hint}; groups: {', '.join(known)}")
    default = defaults(config_dir).get(group)
    width = max(len(o) for o in known[group]) + 2
    lines = []
    for option in known[group]:
        mark = "*" if option == default else " "
        text = description(Path(config_dir) / group / f"{option}.yaml")
        lines.append(f"{mark} {option:{width}}{text}")
    lines.append(f"(* = default; choose with: rkpipe params {group}=OPTION)")
    return "\n".join(lines)


def suggest_option(config_dir: Path, group: str, option: str) -> str:
    """``" (did you mean quant=w8a8?)"`` for the closest option of ``group``, else ``""``."""
    match = closest(option, groups(config_dir).get(group, []))
    return f" (did you mean {group}={match}?)" if match else ""


def closest(word: str, choices: list[str]) -> str | None:
    """The choice most like ``word`` (difflib ratio >= 0.6), or None."""
    close = difflib.get_close_matches(word, choices, n=1, cutoff=0.6)
    return close[0] if close else None


def _did_you_mean(word: str, choices: list[str]) -> str:
    match = closest(word, choices)
    return f" (did you mean {match}?)" if match else ""
