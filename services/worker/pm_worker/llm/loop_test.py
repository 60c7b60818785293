"""The agent tool loop end to end: the real `anthropic` SDK client against a local server that
speaks the Messages API with scripted replies, and our real loop around it."""

from __future__ import annotations

import itertools
from collections.abc import AsyncIterator, Callable, Mapping
from typing import Any

import pytest

from pm_testing.fake_llm import (
    FakeLLM,
    anthropic_error,
    message,
    overloaded,
    running_fake_llm,
    text,
    tool_use,
)
from pm_worker.llm.anthropic_api import AnthropicProvider
from pm_worker.llm.loop import AgentLoop, LoopSettings, Step
from pm_worker.llm.pricing import PriceTable
from pm_worker.llm.protocol import (
    AnswerMissing,
    ProviderRejected,
    ProviderUnavailable,
    StructuredOutputInvalid,
    ToolResult,
    ToolSpec,
)
from pm_worker.llm.schemas import Findings

EPHEMERAL = {"type": "ephemeral"}
MODEL = "claude-sonnet-5-5"
CONTEXT = "Alert: payments p99 latency above 2s since 10:04Z. Investigate from 04:00Z to 10:20Z."
SYSTEM = "You investigate incidents. Cite call_ids. Finish with submit."
TOOLS = (
    ToolSpec(
        name="logs_search",
        description="Search log records.",
        input_schema={
            "type": "object",
            "properties": {"service": {"type": "string"}, "min_severity": {"type": "string"}},
            "required": ["service"],
        },
    ),
    ToolSpec(
        name="changes_diff",
        description="The diff of a commit.",
        input_schema={"type": "object", "properties": {"sha": {"type": "string"}}, "required": ["sha"]},
    ),
)

Answer = str | tuple[str, bool] | Callable[[dict[str, Any]], tuple[str, bool]]


class ScriptedTools:
    """A ToolRunner answering from a table and numbering its calls call-1, call-2, ..."""

    def __init__(self, answers: Mapping[str, Answer]) -> None:
        self._answers = answers
        self._ids = itertools.count(1)
        self.calls: list[tuple[str, dict[str, Any]]] = []

    async def call(self, name: str, arguments: dict[str, Any]) -> ToolResult:
        self.calls.append((name, arguments))
        answer = self._answers[name]
        if callable(answer):
            body, failed = answer(arguments)
        elif isinstance(answer, tuple):
            body, failed = answer
        else:
            body, failed = answer, False
        return ToolResult(call_id=f"call-{next(self._ids)}", text=body, is_error=failed)


def findings(*call_ids: str, **overrides: Any) -> dict[str, Any]:
    """A valid submit input whose evidence cites `call_ids`."""
    value: dict[str, Any] = {
        "verdict": "ROOT_CAUSE",
        "confidence": 0.8,
        "summary": "Commit abc123 shrank the payments connection pool.",
        "first_failing_service": "payments",
        "blast_radius": ["checkout"],
        "culprit": {"kind": "commit", "ref": "abc123", "service": "payments", "title": "Shrink the pool"},
        "operational_signal": "",
        "remediation": {"class": "rollback", "steps": ["Roll payments back to the build before abc123."]},
        "hypotheses": [],
        "evidence": [{"claim": "payments logs 'pool exhausted' from 10:03Z", "call_ids": list(call_ids or ["call-1"])}],
        "timeline": [{"at": "2026-03-01T10:03:00Z", "event": "payments started logging errors"}],
    }
    value.update(overrides)
    return value


def step(**overrides: Any) -> Step[Findings]:
    values: dict[str, Any] = {"system": SYSTEM, "context": CONTEXT, "tools": TOOLS, "output": Findings, "model": MODEL}
    values.update(overrides)
    return Step(**values)


def tool_results(body: Mapping[str, Any]) -> dict[str, dict[str, Any]]:
    """Every tool_result block of a request, by tool_use_id."""
    return {
        block["tool_use_id"]: block
        for msg in body["messages"]
        if msg["role"] == "user" and isinstance(msg["content"], list)
        for block in msg["content"]
        if block.get("type") == "tool_result"
    }


def breakpoints(body: Mapping[str, Any]) -> int:
    blocks = [*body["system"], *body["tools"]]
    blocks += [b for msg in body["messages"] if isinstance(msg["content"], list) for b in msg["content"]]
    return sum(1 for b in blocks if "cache_control" in b)


@pytest.fixture()
async def llm() -> AsyncIterator[FakeLLM]:
    async with running_fake_llm() as fake:
        yield fake


@pytest.fixture()
async def provider(llm: FakeLLM) -> AsyncIterator[AnthropicProvider]:
    async with AnthropicProvider(api_key="test-key", base_url=llm.anthropic_base_url, max_retries=2) as client:
        yield client


async def test_tool_use_then_submit_returns_the_validated_findings(llm: FakeLLM, provider: AnthropicProvider) -> None:
    llm.anthropic(
        message(text("Looking at the logs."), tool_use("logs_search", {"service": "payments"}, id="toolu_a")),
        message(tool_use("submit", findings("call-1"), id="toolu_b")),
    )
    tools = ScriptedTools({"logs_search": '[{"msg": "pool exhausted"}]'})

    result = await AgentLoop(provider).run(step(), tools)

    assert isinstance(result.output, Findings)
    assert result.output.verdict == "ROOT_CAUSE"
    assert result.output.evidence[0].call_ids == ["call-1"]
    assert tools.calls == [("logs_search", {"service": "payments"})]
    assert result.call_ids == ("call-1",)
    assert result.turns == 2
    assert (result.provider, result.model, result.switched_provider) == ("anthropic", MODEL, False)
    first, second = llm.bodies()
    assert first["model"] == MODEL
    assert first["messages"] == [
        {"role": "user", "content": [{"type": "text", "text": CONTEXT, "cache_control": EPHEMERAL}]}
    ]
    assert [t["name"] for t in first["tools"]] == ["logs_search", "changes_diff", "submit"]
    assert "tool_choice" not in first
    assert second["messages"][1]["role"] == "assistant"
    assert second["messages"][1]["content"][1]["id"] == "toolu_a"
    result_block = tool_results(second)["toolu_a"]
    assert result_block["is_error"] is False
    assert result_block["content"] == 'call_id: call-1\n[{"msg": "pool exhausted"}]'
    assert [entry.get("turn") for entry in result.trace] == [1, 2]
    assert result.trace[0]["tool_results"][0]["call_id"] == "call-1"


async def test_usage_adds_up_tokens_and_cost_including_the_cache(llm: FakeLLM, provider: AnthropicProvider) -> None:
    llm.anthropic(
        message(
            tool_use("logs_search", {"service": "payments"}),
            input_tokens=1_000,
            output_tokens=100,
            cache_creation_input_tokens=4_000,
        ),
        message(
            tool_use("submit", findings("call-1")),
            input_tokens=500,
            output_tokens=300,
            cache_read_input_tokens=4_000,
        ),
    )
    prices = PriceTable({MODEL: {"input": 3.0, "output": 15.0, "cache_write": 3.75, "cache_read": 0.30}})

    result = await AgentLoop(provider, prices=prices).run(step(), ScriptedTools({"logs_search": "[]"}))

    usage = result.usage
    assert (usage.input_tokens, usage.output_tokens) == (1_500, 400)
    assert (usage.cache_creation_input_tokens, usage.cache_read_input_tokens) == (4_000, 4_000)
    assert usage.calls == 2
    expected = (1_500 * 3.0 + 400 * 15.0 + 4_000 * 3.75 + 4_000 * 0.30) / 1_000_000
    assert usage.cost_usd == pytest.approx(expected)
    assert result.usage_by_model[MODEL] == usage
    assert result.trace[1]["usage"]["cache_read_input_tokens"] == 4_000


async def test_the_stable_prefix_carries_cache_breakpoints(llm: FakeLLM, provider: AnthropicProvider) -> None:
    llm.anthropic(
        message(tool_use("logs_search", {"service": "payments"}, id="toolu_a")),
        message(tool_use("logs_search", {"service": "checkout"}, id="toolu_b")),
        message(tool_use("submit", findings("call-1"))),
    )

    await AgentLoop(provider).run(step(), ScriptedTools({"logs_search": "[]"}))

    bodies = llm.bodies()
    assert len(bodies) == 3
    for body in bodies:
        assert body["system"] == [{"type": "text", "text": SYSTEM, "cache_control": EPHEMERAL}]
        assert body["tools"][-1]["cache_control"] == EPHEMERAL
        assert all("cache_control" not in t for t in body["tools"][:-1])
        assert body["messages"][0]["content"][0] == {"type": "text", "text": CONTEXT, "cache_control": EPHEMERAL}
        assert breakpoints(body) <= 4
    # The rolling breakpoint sits on the newest block only, so earlier turns are read from the cache.
    third = bodies[2]
    assert third["messages"][-1]["content"][-1]["cache_control"] == EPHEMERAL
    assert "cache_control" not in third["messages"][2]["content"][-1]
    assert breakpoints(third) == 4


async def test_tool_errors_go_back_to_the_model_as_data(llm: FakeLLM, provider: AnthropicProvider) -> None:
    llm.anthropic(
        message(tool_use("changes_diff", {"sha": "nope"}, id="toolu_a"), tool_use("deploys_list", {}, id="toolu_b")),
        message(tool_use("submit", findings("call-1"))),
    )
    tools = ScriptedTools({"changes_diff": ("unknown commit 'nope'", True)})

    result = await AgentLoop(provider).run(step(), tools)

    results = tool_results(llm.bodies()[1])
    assert results["toolu_a"]["is_error"] is True
    assert results["toolu_a"]["content"] == "call_id: call-1\nunknown commit 'nope'"
    assert results["toolu_b"]["is_error"] is True
    assert "There is no tool named 'deploys_list'" in results["toolu_b"]["content"]
    assert [name for name, _ in tools.calls] == ["changes_diff"]
    assert result.output.verdict == "ROOT_CAUSE"


async def test_an_identical_repeated_call_is_not_run_again(llm: FakeLLM, provider: AnthropicProvider) -> None:
    llm.anthropic(
        message(tool_use("logs_search", {"service": "payments", "min_severity": "error"}, id="toolu_a")),
        message(tool_use("logs_search", {"min_severity": "error", "service": "payments"}, id="toolu_b")),
        message(tool_use("logs_search", {"service": "payments", "min_severity": "warning"}, id="toolu_c")),
        message(tool_use("submit", findings("call-1", "call-2"))),
    )
    tools = ScriptedTools({"logs_search": "[]"})

    result = await AgentLoop(provider).run(step(), tools)

    assert len(tools.calls) == 2
    repeated = tool_results(llm.bodies()[2])["toolu_b"]
    assert repeated["is_error"] is True
    assert "Not run again" in repeated["content"]
    assert "call_id call-1" in repeated["content"]
    assert tool_results(llm.bodies()[3])["toolu_c"]["content"].startswith("call_id: call-2\n")
    assert result.call_ids == ("call-1", "call-2")
    assert result.trace[1]["tool_results"][0]["repeated"] is True


async def test_an_oversized_result_is_cut_with_a_marker_saying_how_to_narrow_the_query(
    llm: FakeLLM, provider: AnthropicProvider
) -> None:
    llm.anthropic(
        message(tool_use("logs_search", {"service": "payments"}, id="toolu_a")),
        message(tool_use("submit", findings("call-1"))),
    )
    huge = "\n".join(f'{{"ts": "10:{i % 60:02d}", "msg": "timeout talking to ledger"}}' for i in range(2_000))
    loop = AgentLoop(provider, settings=LoopSettings(max_result_chars=1_000))

    result = await loop.run(step(), ScriptedTools({"logs_search": huge}))

    content = tool_results(llm.bodies()[1])["toolu_a"]["content"]
    assert content.startswith("call_id: call-1\n")
    assert len(content) < 1_400
    assert f"of {len(huge)} characters" in content
    assert "smaller time window" in content
    assert "lower limit" in content
    assert result.trace[0]["tool_results"][0]["truncated"] is True


async def test_the_last_allowed_turn_forces_the_submit_tool(llm: FakeLLM, provider: AnthropicProvider) -> None:
    llm.anthropic(
        message(tool_use("logs_search", {"service": "payments"})),
        message(tool_use("logs_search", {"service": "checkout"})),
        message(tool_use("submit", findings("call-1"))),
    )
    loop = AgentLoop(provider, settings=LoopSettings(max_turns=3))

    result = await loop.run(step(), ScriptedTools({"logs_search": "[]"}))

    choices = [body.get("tool_choice") for body in llm.bodies()]
    assert choices == [None, None, {"type": "tool", "name": "submit"}]
    assert [entry["forced"] for entry in result.trace] == [False, False, True]
    assert result.turns == 3


async def test_a_model_that_never_submits_fails_visibly(llm: FakeLLM, provider: AnthropicProvider) -> None:
    llm.anthropic(message(text("I think it is the pool.")), message(text("Definitely the pool.")))
    loop = AgentLoop(provider, settings=LoopSettings(max_turns=2))

    with pytest.raises(AnswerMissing, match="within 2 turn"):
        await loop.run(step(), ScriptedTools({}))

    nudge = llm.bodies()[1]["messages"][-1]["content"][-1]
    assert "Nothing written outside a tool call is read" in nudge["text"]


async def test_a_schema_failure_gets_one_corrective_turn(llm: FakeLLM, provider: AnthropicProvider) -> None:
    invalid = findings(
        "call-1",
        evidence=[{"claim": "pool exhausted", "call_ids": []}],
        remediation={"class": "pray", "steps": ["Wait."]},
    )
    llm.anthropic(
        message(tool_use("logs_search", {"service": "payments"})),
        message(tool_use("submit", invalid, id="toolu_bad")),
        message(tool_use("submit", findings("call-1"))),
    )

    result = await AgentLoop(provider).run(step(), ScriptedTools({"logs_search": "[]"}))

    assert result.output.culprit is not None
    assert result.corrections == 1
    correction_request = llm.bodies()[2]
    correction = tool_results(correction_request)["toolu_bad"]
    assert correction["is_error"] is True
    assert "evidence.0.call_ids" in correction["content"]
    assert "remediation.class" in correction["content"]
    assert correction_request["tool_choice"] == {"type": "tool", "name": "submit"}


async def test_a_second_schema_failure_fails_the_step(llm: FakeLLM, provider: AnthropicProvider) -> None:
    llm.anthropic(
        message(tool_use("submit", {"verdict": "MAYBE"})),
        message(tool_use("submit", {"verdict": "ROOT_CAUSE", "confidence": 2})),
    )

    with pytest.raises(StructuredOutputInvalid, match="again after a corrective turn") as raised:
        await AgentLoop(provider).run(step(), ScriptedTools({}))

    assert len(llm.bodies()) == 2
    errors = raised.value.details["errors"]
    assert isinstance(errors, list)
    assert any(str(problem).startswith("confidence") for problem in errors)


async def test_older_tool_results_are_compacted_near_the_context_limit(
    llm: FakeLLM, provider: AnthropicProvider
) -> None:
    llm.anthropic(
        message(tool_use("logs_search", {"service": "payments"}, id="toolu_1"), input_tokens=1_000),
        message(tool_use("logs_search", {"service": "checkout"}, id="toolu_2"), input_tokens=2_000),
        message(tool_use("logs_search", {"service": "ledger"}, id="toolu_3"), input_tokens=6_000),
        # The model no longer holds call-1's result, so asking again is allowed.
        message(tool_use("logs_search", {"service": "payments"}, id="toolu_4"), input_tokens=3_000),
        message(tool_use("submit", findings("call-1", "call-4")), input_tokens=3_500),
    )
    settings = LoopSettings(context_limit_tokens=10_000, compact_at=0.5, keep_recent_results=1)
    tools = ScriptedTools({"logs_search": "x" * 400})

    result = await AgentLoop(provider, settings=settings).run(step(), tools)

    bodies = llm.bodies()
    before, after = tool_results(bodies[2]), tool_results(bodies[3])
    assert before["toolu_1"]["content"].startswith("call_id: call-1\n")
    assert after["toolu_1"]["content"].startswith("[compacted:")
    assert "call_id call-1" in after["toolu_1"]["content"]
    assert "call_id call-2" in after["toolu_2"]["content"]
    assert after["toolu_3"]["content"].startswith("call_id: call-3\n")
    assert after["toolu_1"]["tool_use_id"] == "toolu_1"
    # The cached prefix is untouched.
    for key in ("system", "tools"):
        assert bodies[3][key] == bodies[0][key]
    assert bodies[3]["messages"][0] == bodies[0]["messages"][0]
    assert len(tools.calls) == 4
    assert result.compactions == 1
    event = next(e for e in result.trace if e.get("event") == "compaction")
    assert event["stubbed_call_ids"] == ["call-1", "call-2"]


async def test_an_overloaded_provider_surfaces_as_unavailable_after_the_sdk_retries(
    llm: FakeLLM, provider: AnthropicProvider
) -> None:
    llm.anthropic(overloaded(), overloaded(), overloaded())

    with pytest.raises(ProviderUnavailable, match="529") as raised:
        await AgentLoop(provider).run(step(), ScriptedTools({}))

    # max_retries=2: the first attempt and two retries, then the loop gives up.
    assert len(llm.bodies()) == 3
    assert llm.unanswered() == 0
    assert raised.value.details == {"status": 529}


async def test_a_rejected_request_is_not_retried_and_is_not_unavailability(
    llm: FakeLLM, provider: AnthropicProvider
) -> None:
    llm.anthropic(anthropic_error(400, "invalid_request_error", "tools.0.name: invalid"))

    with pytest.raises(ProviderRejected, match="invalid_request_error"):
        await AgentLoop(provider).run(step(), ScriptedTools({}))

    assert len(llm.bodies()) == 1


async def test_an_empty_reply_is_nudged_without_sending_an_empty_message_back(
    llm: FakeLLM, provider: AnthropicProvider
) -> None:
    llm.anthropic(message(stop_reason="end_turn"), message(tool_use("submit", findings("call-1"))))

    result = await AgentLoop(provider).run(step(), ScriptedTools({}))

    second = llm.bodies()[1]
    assert [m["role"] for m in second["messages"]] == ["user", "user"]
    assert all(m["content"] for m in second["messages"])
    assert result.turns == 2
