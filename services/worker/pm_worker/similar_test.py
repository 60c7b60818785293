"""What a HYPOTHESIZE step records of the similar past incidents it was given."""

from __future__ import annotations

from pm_worker.similar import hypothesis_context


def test_matches_are_recorded_as_used() -> None:
    given = {
        "abstained": False,
        "reason": "",
        "min_score": 0.55,
        "best_score": 0.71,
        "matches": [
            {"investigation_id": "a1", "ticket_id": "INC-1", "similarity_score": 0.71, "verdict": "ROOT_CAUSE",
             "summary": "x" * 900},
        ],
    }  # fmt: skip
    record = hypothesis_context(given)
    assert record == {
        "used": [
            {"investigation_id": "a1", "ticket_id": "INC-1", "similarity_score": 0.71, "verdict": "ROOT_CAUSE",
             "summary": "x" * 500},
        ],
        "abstained": False,
        "reason": "",
        "min_score": 0.55,
    }  # fmt: skip


def test_an_abstention_keeps_its_reason() -> None:
    given = {"abstained": True, "reason": "no past incident is similar enough (best 0.41 < 0.55)", "matches": []}
    assert hypothesis_context(given) == {
        "used": [],
        "abstained": True,
        "reason": "no past incident is similar enough (best 0.41 < 0.55)",
    }


def test_malformed_input_is_an_abstention() -> None:
    assert hypothesis_context("nonsense")["abstained"] is True
    assert hypothesis_context({"matches": [{"ticket_id": "no id"}, 3]}) == {
        "used": [],
        "abstained": True,
        "reason": "none given",
    }
