"""Shared fixtures: the repository root and a composed default config."""

from __future__ import annotations

from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="session")
def repo_root() -> Path:
    return REPO


@pytest.fixture(scope="session")
def default_cfg():
    from rkpipe.config import compose

    return compose(REPO / "conf")
