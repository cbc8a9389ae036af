"""The one job lifecycle: every event's allowed statuses, and the refusals."""

import itertools
import json

import pytest

from ntkcompute.lifecycle import (
    ACTIVE,
    FINAL,
    TRANSITIONS,
    IllegalTransition,
    Status,
    advance,
    can,
    ended,
    eta_seconds,
)

TABLE = {  # (event, from) -> to, written out: the table the README documents
    ("start", "queued"): "running",
    ("succeed", "running"): "succeeded",
    ("fail", "queued"): "failed",
    ("fail", "running"): "failed",
    ("cancel", "queued"): "cancelled",
    ("cancel", "running"): "cancelled",
    ("resume", "failed"): "queued",
    ("resume", "cancelled"): "queued",
    ("resume", "succeeded"): "queued",
    ("requeue", "running"): "queued",
}


def test_every_event_and_status_is_as_documented():
    for event, status in itertools.product(TRANSITIONS, Status):
        want = TABLE.get((event, status.value))
        assert can(event, status) == (want is not None), (event, status)
        if want is None:
            with pytest.raises(IllegalTransition, match=f"cannot {event} a job that is "
                                                        f"{status.value}"):
                advance(status, event)
        else:
            assert advance(status.value, event) == want


def test_final_statuses_have_no_way_out_but_resume():
    for status in FINAL:
        assert ended(status)
        assert [e for e in TRANSITIONS if can(e, status)] == ["resume"]
    assert not any(ended(s) for s in ACTIVE)
    assert set(ACTIVE) | set(FINAL) == set(Status)


def test_status_is_its_string_everywhere_it_is_stored():
    assert json.dumps({"status": Status.RUNNING}) == '{"status": "running"}'
    assert Status("failed") is Status.FAILED and Status.FAILED == "failed"
    with pytest.raises(IllegalTransition, match="only from nothing"):
        advance("queued", "explode")


def test_eta_counts_only_this_runs_tiles():
    assert eta_seconds(10.0, 0, 5) is None
    assert eta_seconds(10.0, 2, 6) == pytest.approx(30.0)
