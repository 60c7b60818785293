"""Signal analysis: onsets, vocabularies, and what diffs change."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from pm_worker.rules.scoring import jaccard, score_case, summary, table
from pm_worker.rules.signals import analyse_diff, error_onsets, identifiers, mechanisms, onset, paths, words

T0 = datetime(2026, 3, 1, 12, 0, tzinfo=UTC)


def _series(values: list[float]) -> list[tuple[datetime, float]]:
    return [(T0 + timedelta(minutes=i), v) for i, v in enumerate(values)]


def test_onset_is_the_first_sustained_departure() -> None:
    quiet = [0.010, 0.012, 0.011, 0.009, 0.010, 0.011, 0.010, 0.012, 0.011]
    found = onset(_series([*quiet, 0.30, 0.45, 0.50, 0.52]))
    assert found is not None
    assert found.at == T0 + timedelta(minutes=9)
    assert found.direction == 1
    assert found.peak == 0.52
    assert found.ratio > 40


def test_a_single_spike_or_a_flat_series_has_no_onset() -> None:
    assert onset(_series([10, 11, 10, 9, 10, 95, 10, 11, 10, 10, 9, 10])) is None
    assert onset(_series([5.0] * 12)) is None
    assert onset(_series([1, 2, 3])) is None  # too short to have a baseline


def test_a_drop_is_an_onset_too() -> None:
    found = onset(_series([50, 50, 50, 50, 50, 50, 10, 10, 10, 10]))
    assert found is not None
    assert found.direction == -1
    assert found.at == T0 + timedelta(minutes=6)


def test_error_onsets_need_a_burst() -> None:
    def record(service: str, minute: int) -> dict[str, str]:
        return {"service": service, "timestamp": (T0 + timedelta(minutes=minute)).isoformat()}

    records = [record("cart", 0), record("cart", 30), record("cart", 31), record("cart", 32), record("api", 5)]
    assert error_onsets(records) == {"cart": T0 + timedelta(minutes=30)}


def test_words_split_identifiers_and_drop_common_ones() -> None:
    assert {"max", "conns", "default", "defaultmaxconns"} <= words("const defaultMaxConns = 10")
    assert "error" not in words("error: the request failed")
    assert "dashboard_favorites" in identifiers('relation "dashboard_favorites" does not exist')
    assert paths("panic at services/payment/charge.go:118 in Charge") == {"services/payment/charge.go"}
    assert mechanisms(words("context deadline exceeded")) == {"timeout"}
    assert mechanisms(words("x509: certificate has expired")) == {"tls"}


def test_a_changed_limit_is_a_number_change_with_its_name_and_factor() -> None:
    diff = """@@ pkg/db/pool.go @@
-// the ceiling shared by all services
-const defaultMaxConns = 50
+// the ceiling shared by all services
+const defaultMaxConns = 10
"""
    facts = analyse_diff(diff, ["pkg/db/pool.go"])
    assert [(n.context, n.old, n.new) for n in facts.numbers] == [("defaultMaxConns", "50", "10")]
    assert facts.numbers[0].factor == 5
    assert not facts.cosmetic
    # The comment was removed and added unchanged: it is not part of the change.
    assert facts.added == ("const defaultMaxConns = 10",)


def test_durations_compare_across_units() -> None:
    diff = (
        "-ctx, cancel := context.WithTimeout(ctx, 5*time.Second)\n"
        "+ctx, cancel := context.WithTimeout(ctx, 300*time.Millisecond)\n"
    )
    facts = analyse_diff(diff, ["client.go"])
    assert len(facts.numbers) == 1
    assert round(facts.numbers[0].factor, 1) == 16.7
    assert "timeout" in mechanisms(facts.vocabulary)


def test_styles_tests_docs_and_comments_are_cosmetic() -> None:
    assert analyse_diff("-color: red;\n+color: blue;\n", ["web/theme.css"]).cosmetic
    assert analyse_diff("-assert x == 1\n+assert x == 2\n", ["pkg/money/convert_test.go"]).cosmetic
    assert analyse_diff("-// old words\n+// new words\n", ["pkg/retry/backoff.go"]).cosmetic
    assert not analyse_diff("-retries = 3\n+retries = 10\n", ["pkg/retry/backoff.go"]).cosmetic


def test_scores_follow_the_benchmark_rules() -> None:
    truth = {"root_cause_commit": "none", "first_failing_service": "api", "blast_radius": [], "remediation": "scale"}
    findings = {
        "root_cause_commit": "none",
        "verdict": "INCONCLUSIVE",
        "first_failing_service": "api",
        "blast_radius": [],
        "remediation": {"class": "scale"},
        "confidence": 0.5,
    }
    right = score_case("surge", findings, truth, seconds=1.0, tool_calls=10)
    assert (
        right.commit_correct,
        right.first_failing_correct,
        right.blast_radius_jaccard,
        right.remediation_correct,
    ) == (
        True,
        True,
        1.0,
        True,
    )
    blamed = score_case("surge", {**findings, "root_cause_commit": "abc"}, truth, seconds=1.0, tool_calls=10)
    assert not blamed.commit_correct
    overall = summary([right, blamed])
    assert overall["root_cause_accuracy"] == 0.5
    assert overall["none_case_accuracy"] == 0.5
    assert overall["change_case_accuracy"] is None
    assert jaccard(["a", "b"], ["b", "c"]) == 1 / 3


def test_the_cost_of_each_case_is_summed_and_shown() -> None:
    truth = {"root_cause_commit": "abc", "first_failing_service": "api", "blast_radius": [], "remediation": "rollback"}
    findings = {"root_cause_commit": "abc", "verdict": "ROOT_CAUSE", "first_failing_service": "api"}
    scores = [
        score_case("one", findings, truth, seconds=2.0, tool_calls=5, cost_usd=0.0215),
        score_case("two", findings, truth, seconds=3.0, tool_calls=7, cost_usd=0.0385),
    ]
    overall = summary(scores)
    assert overall["cost_usd_total"] == 0.06
    assert overall["cost_usd_per_case_mean"] == 0.03
    rows = table(scores).splitlines()
    assert rows[0].split()[-2:] == ["cost", "$"]
    assert rows[2].split()[-1] == "0.0215"
