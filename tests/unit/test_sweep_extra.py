"""``rkpipe sweep --sweeper optuna`` without the extra "sweep" names the extra to install."""

from __future__ import annotations

import sys

import pytest

from rkpipe.sweep.executor import SweepError


def test_a_missing_optuna_sweeper_names_the_extra(monkeypatch):
    from rkpipe.sweep import search

    # None in sys.modules makes the import fail as if the plugin were not installed
    monkeypatch.setitem(sys.modules, "hydra_plugins.hydra_optuna_sweeper._impl", None)
    objectives = [search.Objective("ppl_delta_pct", "minimize")]
    with pytest.raises(SweepError) as info:
        search._sweeper(objectives, n_trials=2, n_jobs=1, seed=0)
    assert "-e '.[sweep]'" in str(info.value) and "optuna 2.10" in str(info.value)


def test_the_dev_extra_does_not_pull_the_optuna_sweeper():
    from pathlib import Path

    import tomllib

    pyproject = Path(__file__).resolve().parents[2] / "pyproject.toml"
    extras = tomllib.loads(pyproject.read_text())["project"]["optional-dependencies"]
    assert not [r for r in extras["dev"] if "optuna" in r or "sweep" in r]
    assert any(r.startswith("hydra-optuna-sweeper") for r in extras["sweep"])
