"""The rkpipe CLI explains itself: version, help on every option, group listings, did-you-mean,
params printed or checked (including a params.yaml that `dvc exp run -S` rewrote)."""

from __future__ import annotations

import argparse
from pathlib import Path

import pytest

from rkpipe import cli
from rkpipe.config.catalog import describe_group, description

ROOT = Path(__file__).resolve().parents[2]
CONF = ROOT / "conf"


def test_version_prints_the_package_version(capsys):
    with pytest.raises(SystemExit) as exc:
        cli.main(["--version"])
    assert exc.value.code == 0
    assert capsys.readouterr().out.strip() == f"rkpipe {cli._version('rkpipe')}"


def _actions(parser: argparse.ArgumentParser):
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                yield from ((name, a) for a in sub._actions)
                assert "examples:" in (sub.epilog or ""), name


def test_every_option_of_every_subcommand_has_help():
    missing = [
        (name, action.dest)
        for name, action in _actions(cli.build_parser())
        if not action.help and not isinstance(action, argparse._HelpAction)
    ]
    assert missing == []
    assert "``" not in cli.build_parser().format_help()  # no reST markup in the help


def test_a_misspelt_command_gets_a_suggestion(capsys):
    assert cli.main(["parms", "--check"]) == 2
    assert "did you mean 'params'?" in capsys.readouterr().err


def test_list_shows_groups_and_a_groups_options(capsys):
    assert cli.main(["params", "--list", "--config-dir", str(CONF)]) == 0
    out = capsys.readouterr().out
    assert "quant" in out and "ort_int8_weight_only" in out  # the group and its default
    text = describe_group(CONF, "quant")
    line = next(row for row in text.splitlines() if " ort_int8 " in row)
    assert "The seed's scheme" in line and len(line) < 140  # one line, the file's comment
    default = next(row for row in text.splitlines() if "ort_int8_weight_only" in row)
    assert default.startswith("*")
    assert cli.main(["params", "--list", "qaunt", "--config-dir", str(CONF)]) == 1
    assert "did you mean quant?" in capsys.readouterr().err


def test_description_is_the_first_sentence_on_one_line(tmp_path):
    option = tmp_path / "x.yaml"
    option.write_text("# First: a sentence that\n# goes on. Second sentence.\nkey: 1\n")
    assert description(option) == "First: a sentence that goes on."
    option.write_text("key: 1\n# not leading\n")
    assert description(option) == ""


def test_an_unknown_option_suggests_the_closest(capsys):
    assert cli.main(["params", "quant=w8a9", "--show", "--config-dir", str(CONF)]) == 1
    assert "did you mean quant=w8a8?" in capsys.readouterr().err


def test_a_sweep_override_points_to_rkpipe_sweep(capsys):
    assert cli.main(["params", "quant=glob(*)", "--show", "--config-dir", str(CONF)]) == 1
    err = capsys.readouterr().err
    assert "rkpipe sweep 'quant=glob(*)'" in err and "--multirun" not in err
    assert cli.main(["params", "-m", "quant=a,b"]) == 1
    assert "rkpipe sweep quant=a,b" in capsys.readouterr().err


def test_output_dash_and_show_print_without_writing(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    for flags in (["--output", "-"], ["--show"]):
        assert cli.main(["params", *flags, "--config-dir", str(CONF)]) == 0
        assert "quant:" in capsys.readouterr().out
    assert list(tmp_path.iterdir()) == []


def test_check_accepts_a_valid_variant_and_names_what_differs(tmp_path, capsys):
    target = tmp_path / "params.yaml"
    args = ["params", "--config-dir", str(CONF), "--output", str(target)]
    assert cli.main([*args, "--check"]) == 1
    assert "missing" in capsys.readouterr().out
    assert cli.main(args) == 0 and cli.main([*args, "--check"]) == 0
    # what `dvc exp run -S quant.ort.block_size=64` leaves in the workspace
    text = target.read_text().replace("block_size: 32", "block_size: 64", 1)
    target.write_text(text)
    capsys.readouterr()
    assert cli.main([*args, "--check"]) == 0
    out = capsys.readouterr().out
    assert "block_size: 32 in" in out and "-> 64 in" in out and "valid variant" in out
    assert cli.main([*args, "--check", "--strict"]) == 1
    target.write_text(text.replace("block_size: 64", "block_size: banana", 1))
    assert cli.main([*args, "--check"]) == 1
    assert "not a valid config" in capsys.readouterr().out


def test_setup_script_ends_with_the_lenient_check():
    setup = (ROOT / "scripts" / "setup.sh").read_text()
    assert "rkpipe params --check" in setup and "--strict" not in setup
