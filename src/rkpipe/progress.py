"""Progress on long steps, with rich only, sharing the log's console.

The bars and the log lines go to one :func:`console` (stderr), so a log line printed during a
bar appears above it instead of tearing it. When stderr is not a terminal (DVC's captured
output, CI logs) there are no bars at all: the stages' log lines say what happened.
Libraries that draw their own tqdm bars (transformers, huggingface_hub) are silenced by
:func:`silence_other_bars`, so one library renders progress.

- :func:`track` wraps an iterable (calibration batches, evaluation windows, test clips);
- :func:`step` shows a spinner and the elapsed time for one call that reports nothing (GGUF
  de-quantisation, an ONNX export, a quantizer);
- :func:`transfer` counts bytes with the transfer rate (pushes to a board).
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from functools import lru_cache
from typing import Any, TypeVar

T = TypeVar("T")
# tqdm >= 4.66 reads TQDM_* defaults from the environment; huggingface_hub has its own switch.
OTHER_BARS_ENV = {"TQDM_DISABLE": "1", "HF_HUB_DISABLE_PROGRESS_BARS": "1"}


@lru_cache(maxsize=1)
def console() -> Any:
    """The one stderr console the log handler and every bar share."""
    from rich.console import Console

    return Console(stderr=True)


def enabled() -> bool:
    """Bars only on a terminal (``RKPIPE_PROGRESS=0`` turns them off there too)."""
    return console().is_terminal and os.environ.get("RKPIPE_PROGRESS", "1") != "0"


def silence_other_bars() -> None:
    """Turn off tqdm bars of libraries (and of the processes a stage starts)."""
    for key, value in OTHER_BARS_ENV.items():
        os.environ.setdefault(key, value)


def _progress(*columns: Any) -> Any:
    from rich.progress import Progress, SpinnerColumn, TextColumn, TimeElapsedColumn

    return Progress(
        SpinnerColumn(), TextColumn("{task.description}"), *columns, TimeElapsedColumn(),
        console=console(), disable=not enabled(), transient=False,
    )  # fmt: skip


def track(items: Iterable[T], description: str, total: int | None = None) -> Iterator[T]:
    """Yield ``items`` with a bar of ``total`` (``len(items)`` when it has one)."""
    from rich.progress import BarColumn, MofNCompleteColumn

    if total is None and hasattr(items, "__len__"):
        total = len(items)  # type: ignore[arg-type]
    with _progress(BarColumn(), MofNCompleteColumn()) as progress:
        task = progress.add_task(description, total=total)
        for item in items:
            yield item
            progress.advance(task)


@contextmanager
def step(description: str) -> Iterator[None]:
    """A spinner with the elapsed time while the block runs."""
    with _progress() as progress:
        progress.add_task(description, total=None)
        yield


@contextmanager
def transfer(description: str, total_bytes: int) -> Iterator[Callable[[int], None]]:
    """Yield ``update(bytes_done)`` for a bar in bytes, with the transfer rate."""
    from rich.progress import BarColumn, DownloadColumn, TransferSpeedColumn

    with _progress(BarColumn(), DownloadColumn(), TransferSpeedColumn()) as progress:
        task = progress.add_task(description, total=total_bytes)
        yield lambda done: progress.update(task, completed=done)
