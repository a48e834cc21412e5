"""A local journal of everything a stage could not log because the tracking server was down.

When the server is unreachable or answers 5xx past ``tracking.timeout_s``, a stage with
``tracking.journal: true`` neither fails nor drops data: each param, metric, tag, artifact and
status it logs becomes one entry,
``<root>/.dvc/tmp/rkpipe/journal/<variant>/<seq>.json``, written atomically with a sequence
number per variant (artifacts are copied beside it, ``<seq>.files/``, because the stage's
outputs may change before the replay). :mod:`rkpipe.tracking.sync` replays the entries in
order once the server answers: at the start of the next stage, or with ``rkpipe sync``.

Reading and writing the journal needs neither mlflow nor the server.
"""

from __future__ import annotations

import datetime
import json
import logging
import os
import shutil
import socket
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from rkpipe.io import atomic_path, write_json_atomic, write_text_atomic

log = logging.getLogger(__name__)
JOURNAL_DIR = Path(".dvc") / "tmp" / "rkpipe" / "journal"
# What a journal entry can hold: the logging calls of a stage, plus opening and closing the run.
OPS = (
    "open", "log_params", "log_metrics", "set_tags", "log_artifact", "log_dict",
    "log_dataset", "close",
)  # fmt: skip


def journal_root(root: Path) -> Path:
    """Where the journals of the repository at ``root`` live."""
    return Path(root) / JOURNAL_DIR


@dataclass(frozen=True)
class Entry:
    """One journaled call: its file and what it holds."""

    path: Path
    data: dict[str, Any]

    @property
    def seq(self) -> int:
        """Its place in the variant's journal (1, 2, ...; never reused)."""
        return int(self.data["seq"])

    @property
    def op(self) -> str:
        """What to replay: one of :data:`OPS`."""
        return str(self.data["op"])

    @property
    def args(self) -> dict[str, Any]:
        """The call's arguments, as JSON."""
        return dict(self.data.get("args") or {})

    @property
    def stage(self) -> str:
        """The stage that logged it."""
        return str(self.data.get("stage", "?"))

    @property
    def run_id(self) -> str | None:
        """The run it belongs to, when the stage had opened it before the server went down."""
        return self.data.get("run_id") or None

    @property
    def files(self) -> Path:
        """Where its copied artifact lives."""
        return self.path.with_suffix(".files")


class Journal:
    """The journal of one variant (its ``rkpipe.variant`` id) for one tracking store."""

    def __init__(self, root: Path, variant: str, store: str) -> None:
        self.folder = journal_root(root) / variant
        self.variant = variant
        self.store = store  # the tracking URI with credentials redacted

    def append(
        self, stage: str, op: str, args: Mapping[str, Any], run_id: str | None = None,
        files: Path | None = None,
    ) -> int:  # fmt: skip
        """Write one entry atomically and return its sequence number; ``files`` (a file or
        directory) is copied beside it first, so an entry never names a missing copy."""
        from filelock import FileLock

        if op not in OPS:
            raise ValueError(f"unknown journal op {op!r}; one of {', '.join(OPS)}")
        self.folder.mkdir(parents=True, exist_ok=True)
        with FileLock(str(self.folder / ".lock")):
            seq = self._last_seq() + 1
            entry = self.folder / f"{seq:08d}.json"
            if files is not None:
                _copy(files, entry.with_suffix(".files") / files.name)
            write_json_atomic(entry, {
                "seq": seq, "variant": self.variant, "store": self.store, "stage": stage,
                "run_id": run_id, "op": op, "args": dict(args), "pid": os.getpid(),
                "host": socket.gethostname(),
                "at": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
            })  # fmt: skip
            write_text_atomic(self.folder / "seq", str(seq))
        return seq

    def _last_seq(self) -> int:
        # The counter survives replays, so a sequence number is never reused.
        counter = self.folder / "seq"
        try:
            last = int(counter.read_text(encoding="utf-8").strip() or 0)
        except (OSError, ValueError):
            last = 0
        return max([last, *(int(p.stem) for p in self.folder.glob("[0-9]*.json"))])

    def entries(self) -> list[Entry]:
        """The readable entries not yet replayed, in order; :meth:`unreadable` names the rest."""
        return self._read()[0]

    def unreadable(self) -> list[str]:
        """One line per entry that is not a journal entry: its file and what to do."""
        return self._read()[1]

    def _read(self) -> tuple[list[Entry], list[str]]:
        found, bad = [], []
        for path in sorted(self.folder.glob("[0-9]*.json")):
            try:
                data = json.loads(path.read_text(encoding="utf-8"))
                if not isinstance(data, dict) or data.get("op") not in OPS:
                    raise ValueError("not a journal entry")
                int(data["seq"])
            except (OSError, ValueError, KeyError, TypeError) as exc:
                bad.append(
                    f"journal entry {path} is unreadable ({exc}); the rest was replayed without "
                    f"it; move it out of {self.folder} (its figures are still in DVC's metrics)"
                )
                continue
            found.append(Entry(path, data))
        return found, bad

    def forget(self, entry: Entry) -> None:
        """Remove a replayed entry and its copied artifact."""
        shutil.rmtree(entry.files, ignore_errors=True)
        entry.path.unlink(missing_ok=True)

    def tags(self) -> dict[str, str]:
        """The tags journaled so far (what the run will hold once replayed)."""
        tags: dict[str, str] = {}
        for entry in self.entries():
            if entry.op in ("open", "set_tags"):
                tags |= entry.args.get("tags", {})
        return tags


def journals(root: Path) -> list[Journal]:
    """Every variant's journal under ``root`` that holds entries, oldest first."""
    base = journal_root(root)
    if not base.is_dir():
        return []
    found = []
    for folder in sorted(base.iterdir(), key=_mtime):
        if folder.is_dir() and any(folder.glob("[0-9]*.json")):
            found.append(Journal(root, folder.name, _store_of(folder)))
    return found


def pending_count(root: Path) -> int:
    """How many entries wait for a replay (0 when there is no journal)."""
    return sum(len(list(j.folder.glob("[0-9]*.json"))) for j in journals(root))


def _store_of(folder: Path) -> str:
    for path in sorted(folder.glob("[0-9]*.json")):
        try:
            return str(json.loads(path.read_text(encoding="utf-8")).get("store", ""))
        except (OSError, ValueError, AttributeError):
            continue
    return ""


def _copy(source: Path, target: Path) -> None:
    with atomic_path(target) as tmp:
        if source.is_dir():
            shutil.copytree(source, tmp)
        else:
            shutil.copy2(source, tmp)


def _mtime(path: Path) -> float:
    try:
        return path.stat().st_mtime
    except OSError:
        return time.time()


def journal_call(
    journal: Journal, stage: str, run_id: str | None, op: str, *a: Any, **kw: Any
) -> Any:
    """Journal one :class:`~rkpipe.tracking.handle.VariantRun` call ``op(*a, **kw)`` as JSON.

    ``tags()`` answers from the journal; every other call returns None, as the method does.
    """
    if op == "tags":
        return journal.tags()
    files = None
    if op == "log_params":
        args = {"params": {k: str(v) for k, v in _arg(a, kw, 0, "params").items()}}
    elif op == "log_metrics":
        metrics = _arg(a, kw, 0, "metrics")
        args = {
            "metrics": {k: float(v) for k, v in metrics.items() if _number(v)},
            "step": int(_arg(a, kw, 1, "step", 0)),
            "timestamp_ms": int(_arg(a, kw, 2, "timestamp_ms", None) or time.time() * 1000),
        }
    elif op == "set_tags":
        args = {"tags": {k: str(v) for k, v in _arg(a, kw, 0, "tags").items()}}
    elif op == "log_artifact":
        path = Path(_arg(a, kw, 0, "path"))
        if not path.exists():
            log.warning("not journaling missing artifact %s", path)
            return None
        files = path
        args = {"file": path.name, "artifact_path": _arg(a, kw, 1, "artifact_path", None)}
    elif op == "log_dict":
        data = json.loads(json.dumps(_arg(a, kw, 0, "data"), default=str))
        args = {"data": data, "artifact_file": _arg(a, kw, 1, "artifact_file")}
    elif op == "log_dataset":
        names = ("path", "digest", "name", "context")
        args = {n: str(_arg(a, kw, i, n)) for i, n in enumerate(names)}
    else:
        raise ValueError(f"cannot journal {op!r}")
    journal.append(stage, op, args, run_id=run_id, files=files)
    return None


def _arg(args: tuple, kwargs: dict, index: int, name: str, default: Any = ...) -> Any:
    if len(args) > index:
        return args[index]
    if name in kwargs:
        return kwargs[name]
    if default is ...:
        raise TypeError(f"missing argument {name!r}")
    return default


def _number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)
