"""The OpenAI-compatible fallback: the conversation translated both ways, and a step that
switches provider mid-conversation when Anthropic stays overloaded (both real SDK clients
against one local fake server)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from types import SimpleNamespace
from typing import Any

import pytest

from pm_testing.fake_llm import (
    CHAT_PATH,
    MESSAGES_PATH,
    FakeLLM,
    chat_completion,
    message,
    openai_error,
    overloaded,
    running_fake_llm,
    tool_use,
)
from pm_worker.llm.anthropic_api import AnthropicProvider
from pm_worker.llm.fallback import (
    OpenAICompatibleProvider,
    from_chat_message,
    to_chat_messages,
    to_chat_tool_choice,
    to_chat_tools,
)
from pm_worker.llm.loop import AgentLoop, Fallback, LoopSettings
from pm_worker.llm.loop_test import CONTEXT, MODEL, SYSTEM, ScriptedTools, findings, step
from pm_worker.llm.protocol import ProviderUnavailable

FALLBACK_MODEL = "qwen3-coder-local"
EPHEMERAL = {"type": "ephemeral"}


def test_a_messages_history_becomes_chat_messages() -> None:
    system = [{"type": "text", "text": SYSTEM, "cache_control": EPHEMERAL}]
    history: list[dict[str, Any]] = [
        {"role": "user", "content": [{"type": "text", "text": CONTEXT, "cache_control": EPHEMERAL}]},
        {
            "role": "assistant",
            "content": [
                {"type": "text", "text": "Two lookups."},
                {"type": "tool_use", "id": "toolu_a", "name": "logs_search", "input": {"service": "payments"}},
                {"type": "tool_use", "id": "toolu_b", "name": "changes_diff", "input": {"sha": "nope"}},
            ],
        },
        {
            "role": "user",
            "content": [
                {"type": "tool_result", "tool_use_id": "toolu_a", "content": "call_id: call-1\n[]", "is_error": False},
                {
                    "type": "tool_result",
                    "tool_use_id": "toolu_b",
                    "content": "call_id: call-2\nno such commit",
                    "is_error": True,
                },
                {"type": "text", "text": "Your last reply hit the max_tokens limit."},
            ],
        },
    ]

    chat = to_chat_messages(system, history)

    assert chat == [
        {"role": "system", "content": SYSTEM},
        {"role": "user", "content": CONTEXT},
        {
            "role": "assistant",
            "content": "Two lookups.",
            "tool_calls": [
                {
                    "id": "toolu_a",
                    "type": "function",
                    "function": {"name": "logs_search", "arguments": '{"service": "payments"}'},
                },
                {
                    "id": "toolu_b",
                    "type": "function",
                    "function": {"name": "changes_diff", "arguments": '{"sha": "nope"}'},
                },
            ],
        },
        {"role": "tool", "tool_call_id": "toolu_a", "content": "call_id: call-1\n[]"},
        {"role": "tool", "tool_call_id": "toolu_b", "content": "ERROR: call_id: call-2\nno such commit"},
        {"role": "user", "content": "Your last reply hit the max_tokens limit."},
    ]


def test_tools_and_tool_choice_become_their_chat_forms() -> None:
    tools = [
        {"name": "submit", "description": "Hand in.", "input_schema": {"type": "object"}, "cache_control": EPHEMERAL}
    ]

    assert to_chat_tools(tools) == [
        {
            "type": "function",
            "function": {"name": "submit", "description": "Hand in.", "parameters": {"type": "object"}},
        }
    ]
    assert to_chat_tool_choice({"type": "tool", "name": "submit"}) == {
        "type": "function",
        "function": {"name": "submit"},
    }
    assert to_chat_tool_choice({"type": "auto"}) == "auto"
    assert to_chat_tool_choice(None) is None


def test_a_chat_answer_becomes_content_blocks_and_bad_arguments_are_not_guessed() -> None:
    call = SimpleNamespace(
        id="call_9", type="function", function=SimpleNamespace(name="submit", arguments='{"verdict": "ROOT')
    )

    blocks = from_chat_message(SimpleNamespace(content="Done.", tool_calls=[call]))

    assert blocks == [
        {"type": "text", "text": "Done."},
        {"type": "tool_use", "id": "call_9", "name": "submit", "input": {"_unparsed_arguments": '{"verdict": "ROOT'}},
    ]


@pytest.fixture()
async def llm() -> AsyncIterator[FakeLLM]:
    async with running_fake_llm() as fake:
        yield fake


@pytest.fixture()
async def providers(llm: FakeLLM) -> AsyncIterator[tuple[AnthropicProvider, OpenAICompatibleProvider]]:
    async with (
        AnthropicProvider(api_key="test-key", base_url=llm.anthropic_base_url, max_retries=2) as primary,
        OpenAICompatibleProvider(api_key="test-key", base_url=llm.openai_base_url, max_retries=2) as secondary,
    ):
        yield primary, secondary


async def test_an_overloaded_provider_hands_the_same_conversation_to_the_fallback(
    llm: FakeLLM, providers: tuple[AnthropicProvider, OpenAICompatibleProvider]
) -> None:
    primary, secondary = providers
    llm.anthropic(
        message(tool_use("logs_search", {"service": "payments"}, id="toolu_a"), input_tokens=1_000),
        overloaded(),
        overloaded(),
        overloaded(),
    )
    llm.openai(
        chat_completion(tool_calls=[("call_fb1", "changes_diff", {"sha": "abc123"})], cached_tokens=60),
        chat_completion(tool_calls=[("call_fb2", "submit", findings("call-1", "call-2"))]),
    )
    loop = AgentLoop(primary, fallback=Fallback(secondary, FALLBACK_MODEL), settings=LoopSettings(max_turns=3))
    tools = ScriptedTools({"logs_search": "[]", "changes_diff": "-pool_size = 50\n+pool_size = 5"})

    result = await loop.run(step(), tools)

    assert result.output.verdict == "ROOT_CAUSE"
    assert (result.switched_provider, result.provider, result.model) == (True, "openai-compatible", FALLBACK_MODEL)
    assert result.call_ids == ("call-1", "call-2")
    # One answered request and three overloaded attempts (the SDK's retries) on Anthropic, then none.
    assert len(llm.bodies(MESSAGES_PATH)) == 4
    first, second = llm.bodies(CHAT_PATH)
    assert first["model"] == FALLBACK_MODEL
    assert first["temperature"] == 0
    assert first["max_completion_tokens"] == LoopSettings().max_tokens
    assert "tool_choice" not in first
    assert [t["function"]["name"] for t in first["tools"]] == ["logs_search", "changes_diff", "submit"]
    assert first["messages"] == [
        {"role": "system", "content": SYSTEM},
        {"role": "user", "content": CONTEXT},
        {
            "role": "assistant",
            "content": None,
            "tool_calls": [
                {
                    "id": "toolu_a",
                    "type": "function",
                    "function": {"name": "logs_search", "arguments": '{"service": "payments"}'},
                }
            ],
        },
        {"role": "tool", "tool_call_id": "toolu_a", "content": "call_id: call-1\n[]"},
    ]
    # The fallback's own turn continues the conversation, and the last turn is forced there too.
    assert second["messages"][-2]["tool_calls"][0]["id"] == "call_fb1"
    assert second["messages"][-1] == {
        "role": "tool",
        "tool_call_id": "call_fb1",
        "content": "call_id: call-2\n-pool_size = 50\n+pool_size = 5",
    }
    assert second["tool_choice"] == {"type": "function", "function": {"name": "submit"}}
    switch = next(e for e in result.trace if e.get("event") == "provider_switch")
    assert switch["from"] == {"provider": "anthropic", "model": MODEL}
    assert switch["to"] == {"provider": "openai-compatible", "model": FALLBACK_MODEL}
    assert "529" in switch["reason"]
    assert result.usage_by_model[MODEL].input_tokens == 1_000
    fallback_usage = result.usage_by_model[FALLBACK_MODEL]
    assert (fallback_usage.input_tokens, fallback_usage.cache_read_input_tokens) == (140, 60)
    assert FALLBACK_MODEL in result.usage.unpriced_models


async def test_when_the_fallback_is_down_too_the_step_fails_as_unavailable(
    llm: FakeLLM, providers: tuple[AnthropicProvider, OpenAICompatibleProvider]
) -> None:
    primary, secondary = providers
    llm.anthropic(overloaded(), overloaded(), overloaded())
    llm.openai(*[openai_error(503, "upstream unavailable") for _ in range(3)])
    loop = AgentLoop(primary, fallback=Fallback(secondary, FALLBACK_MODEL))

    with pytest.raises(ProviderUnavailable, match="OpenAI-compatible API answered 503"):
        await loop.run(step(), ScriptedTools({}))

    assert len(llm.bodies(CHAT_PATH)) == 3
