"""Progress bars: rich only, on the log's console, and nothing when stderr is not a terminal."""

from __future__ import annotations

import io
import logging
import os

import pytest

from rkpipe import progress


@pytest.fixture()
def terminal(monkeypatch):
    """A console that claims to be a terminal, writing into a buffer."""
    from rich.console import Console

    buffer = io.StringIO()
    fake = Console(file=buffer, force_terminal=True, width=120, color_system=None)
    monkeypatch.setattr(progress, "console", lambda: fake)
    monkeypatch.delenv("RKPIPE_PROGRESS", raising=False)
    return buffer


def test_track_draws_a_bar_with_the_count_on_a_terminal(terminal):
    assert list(progress.track([1, 2, 3], "scoring windows")) == [1, 2, 3]
    shown = terminal.getvalue()
    assert "scoring windows" in shown and "3/3" in shown


def test_transfer_shows_bytes_and_a_rate(terminal):
    with progress.transfer("pushing model.onnx", 4 * 2**20) as update:
        update(2 * 2**20)
        update(4 * 2**20)
    shown = terminal.getvalue()
    assert "pushing model.onnx" in shown and "4.2/4.2 MB" in shown


def test_no_bar_off_a_terminal_or_when_turned_off(terminal, monkeypatch):
    monkeypatch.setenv("RKPIPE_PROGRESS", "0")
    with progress.step("exporting to ONNX"):
        pass
    assert list(progress.track(range(2), "windows")) == [0, 1]
    assert terminal.getvalue() == ""
    monkeypatch.delenv("RKPIPE_PROGRESS")
    monkeypatch.setattr(progress.console(), "_force_terminal", False)
    assert not progress.enabled()  # DVC's captured output and CI logs stay quiet


def test_stage_logging_shares_the_console_and_turns_off_tqdm(monkeypatch):
    from rich.logging import RichHandler

    from rkpipe.stage import configure_logging

    for key in progress.OTHER_BARS_ENV:
        monkeypatch.delenv(key, raising=False)
    configure_logging("INFO")
    handler = logging.getLogger().handlers[0]
    assert isinstance(handler, RichHandler) and handler.console is progress.console()
    assert os.environ["TQDM_DISABLE"] == "1" and os.environ["HF_HUB_DISABLE_PROGRESS_BARS"] == "1"
