"""The tracking journal's files: atomic entries in order, sequence numbers never reused, calls
serialised as a replay needs them, and an unreadable entry named with what to do."""

import json

import pytest

from rkpipe.tracking.handle import VariantRun
from rkpipe.tracking.journal import Journal, journals, pending_count


@pytest.fixture()
def journal(tmp_path):
    return Journal(tmp_path, "abc123", "http://127.0.0.1:5050")


def test_entries_keep_their_order_and_numbers_are_never_reused(journal, tmp_path):
    assert journal.append("evaluate", "set_tags", {"tags": {"a": "1"}}) == 1
    assert journal.append("evaluate", "close", {"status": "FINISHED"}, run_id="r1") == 2
    first, second = journal.entries()
    assert (first.op, second.op, second.run_id, second.stage) == (
        "set_tags",
        "close",
        "r1",
        "evaluate",
    )
    journal.forget(first)
    journal.forget(second)
    assert pending_count(tmp_path) == 0 and journals(tmp_path) == []
    assert journal.append("deploy_bench", "set_tags", {"tags": {}}) == 3  # after a replay too


def test_calls_are_journaled_as_a_replay_needs_them(journal, tmp_path):
    artifact = tmp_path / "details.json"
    artifact.write_text('{"ppl": 30.5}')
    run = VariantRun(None, "", "evaluate", journal)
    run.start_journaling("server down")
    run.log_params({"quant.dtype": "int8", "bench.threads": 2})
    run.log_metrics({"ppl": 30.5, "ok": True, "note": "x"}, timestamp_ms=1234)
    run.set_tags({"board.soc": "rk3588"})
    run.log_artifact(artifact, "metrics")
    run.log_dict({"tokens": 64}, "bench/summary.json")
    artifact.write_text('{"ppl": 99}')  # the stage's output changes before the replay
    entries = {e.op: e for e in journal.entries()}
    assert entries["log_params"].args["params"] == {"quant.dtype": "int8", "bench.threads": "2"}
    assert entries["log_metrics"].args == {
        "metrics": {"ppl": 30.5},
        "step": 0,
        "timestamp_ms": 1234,
    }
    copy = entries["log_artifact"].files / entries["log_artifact"].args["file"]
    assert json.loads(copy.read_text()) == {"ppl": 30.5}
    assert entries["log_dict"].args == {
        "data": {"tokens": 64},
        "artifact_file": "bench/summary.json",
    }
    assert run.tags() == {"board.soc": "rk3588"}


def test_without_a_journal_an_outage_still_fails_the_stage():
    from rkpipe.errors import TrackingError

    with pytest.raises(TrackingError, match="server down"):
        VariantRun(None, "", "evaluate").start_journaling("server down")


def test_an_unreadable_entry_is_named_and_the_rest_is_kept(journal):
    journal.append("evaluate", "set_tags", {"tags": {}})
    (journal.folder / "00000002.json").write_text("{truncated")
    journal.append("evaluate", "close", {"status": "FINISHED"})
    assert [e.seq for e in journal.entries()] == [1, 3]
    (line,) = journal.unreadable()
    assert "00000002.json is unreadable" in line and f"move it out of {journal.folder}" in line


def test_an_unknown_op_is_refused(journal):
    with pytest.raises(ValueError, match="unknown journal op 'delete_run'"):
        journal.append("evaluate", "delete_run", {})
