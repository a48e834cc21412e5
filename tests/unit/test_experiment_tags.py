"""``ensure_experiment`` against parallel workers racing to tag one experiment on a server."""

from types import SimpleNamespace

import pytest

from rkpipe.tracking.client import EXPERIMENT_KIND_TAG, VIEW_TAG, ensure_experiment


class RacingStore:
    """A store whose first tag insert loses a race: another worker commits the same tag
    between our select and our insert, as MLflow's SQL store on PostgreSQL does
    (``duplicate key value violates unique constraint "experiment_tag_pk"``)."""

    def __init__(self, winner_value=None):
        self.tags: dict[str, str] = {}
        self.winner_value = winner_value
        self.inserts = 0

    def get_experiment_by_name(self, name):
        return SimpleNamespace(experiment_id="7", tags=dict(self.tags))

    def get_experiment(self, experiment_id):
        return SimpleNamespace(experiment_id=experiment_id, tags=dict(self.tags))

    def set_experiment_tag(self, experiment_id, key, value):
        self.inserts += 1
        if key not in self.tags:
            self.tags[key] = value if self.winner_value is None else self.winner_value
            raise RuntimeError('duplicate key value violates unique constraint "experiment_tag_pk"')
        self.tags[key] = value


def test_a_lost_race_with_the_same_tag_is_accepted(tmp_path):
    store = RacingStore()
    assert ensure_experiment(store, "rkpipe", tmp_path) == "7"
    assert set(store.tags) == {EXPERIMENT_KIND_TAG, VIEW_TAG}
    assert store.inserts == 2  # one failed insert per tag, no retry needed


def test_a_lost_race_with_another_value_sets_ours(tmp_path):
    store = RacingStore(winner_value="older rkpipe")
    ensure_experiment(store, "rkpipe", tmp_path)
    assert store.tags[EXPERIMENT_KIND_TAG] == "custom_model_development"
    assert store.inserts == 4


def test_a_store_that_keeps_failing_raises(tmp_path):
    class Down(RacingStore):
        def set_experiment_tag(self, *args):
            raise ConnectionError("server down")

    with pytest.raises(ConnectionError):
        ensure_experiment(Down(), "rkpipe", tmp_path)
