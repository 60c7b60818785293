"""The agent tool loop: a model investigates with tools until it submits a validated answer.

One step is one conversation: the role's system prompt, its tools plus a `submit` tool whose
input schema is the step's output model, and the investigation context as the first user
message. Each turn the model either calls tools (their results go back as tool_result blocks)
or calls `submit`. Safeguards:

- Prompt caching: the stable prefix (tools, system prompt, investigation context) carries
  cache_control breakpoints, and a fourth, rolling breakpoint on the newest message lets each
  turn read the previous turns from the cache.
- A tool's failure is a tool_result with is_error for the model to read, never an exception.
- An identical repeated call (same tool, same arguments) is not run again; the model is told
  which call_id already holds that result.
- A result longer than `max_result_chars` is cut, with a marker saying how to narrow the query.
- The last allowed turn forces the answer (tool_choice = submit).
- Near the context limit, older tool results are replaced by stubs naming their call ids
  (the cached prefix is never touched).
- The submit input is validated with pydantic; a failure gets one corrective turn with the
  validation errors, a second failure raises `StructuredOutputInvalid`. Nothing is ever read
  out of prose.
- When the provider stays unavailable after its client's retries, the step continues on the
  fallback provider (once), with the same conversation, and the switch is recorded.

Every model call is an `llm.call` span: provider, model, tokens, cost and whether the fallback
answered; never the prompt or the answer.
"""

from __future__ import annotations

import functools
import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from typing import Any, Generic, TypeVar

from opentelemetry import trace
from opentelemetry.trace import SpanKind
from pydantic import BaseModel, ValidationError

from pm_worker.llm.pricing import PriceTable, Usage
from pm_worker.llm.protocol import (
    AnswerMissing,
    Block,
    Message,
    ModelProvider,
    ModelRequest,
    ModelTurn,
    ProviderUnavailable,
    StructuredOutputInvalid,
    ToolResult,
    ToolRunner,
    ToolSpec,
)
from pm_worker.llm.schemas import submit_tool

T = TypeVar("T", bound=BaseModel)

EPHEMERAL: Mapping[str, str] = {"type": "ephemeral"}
# Characters per token, roughly, for estimating what newly added tool results will cost.
CHARS_PER_TOKEN = 4
MAX_REPORTED_ERRORS = 30
TRACE_TEXT_CHARS = 2_000


@dataclass(frozen=True, slots=True)
class LoopSettings:
    """Limits of one step's conversation."""

    max_turns: int = 12
    max_tokens: int = 4_096
    temperature: float = 0.0
    max_result_chars: int = 20_000
    context_limit_tokens: int = 200_000
    # Compact when a turn's prompt (plus what was just added) reaches this share of the limit.
    compact_at: float = 0.75
    # The newest tool results that compaction leaves whole.
    keep_recent_results: int = 4

    def __post_init__(self) -> None:
        if self.max_turns < 1:
            raise ValueError(f"max_turns must be >= 1, got {self.max_turns}")
        if not 0 < self.compact_at <= 1:
            raise ValueError(f"compact_at must be in (0, 1], got {self.compact_at}")
        if self.max_result_chars < 1 or self.keep_recent_results < 0:
            raise ValueError("max_result_chars must be >= 1 and keep_recent_results >= 0")


@dataclass(frozen=True, slots=True)
class Fallback:
    """Where a step continues when its provider is unavailable."""

    provider: ModelProvider
    model: str


@dataclass(frozen=True, slots=True)
class Step(Generic[T]):
    """What one step asks of a model."""

    system: str
    context: str
    tools: Sequence[ToolSpec]
    output: type[T]
    model: str
    # The tool the answer comes through; by default `submit` with `output`'s schema.
    submit: ToolSpec | None = None

    def submit_spec(self) -> ToolSpec:
        """The submit tool of this step."""
        return self.submit or submit_tool(self.output)


@dataclass(frozen=True, slots=True)
class LoopResult(Generic[T]):
    """A step's validated answer and what it took to get it."""

    output: T
    usage: Usage
    usage_by_model: Mapping[str, Usage]
    call_ids: tuple[str, ...]
    turns: int
    trace: list[dict[str, Any]]
    provider: str
    model: str
    switched_provider: bool = False
    corrections: int = 0
    compactions: int = 0


class AgentLoop:
    """Runs steps on a provider (and a fallback), pricing every call."""

    def __init__(
        self,
        provider: ModelProvider,
        *,
        fallback: Fallback | None = None,
        prices: PriceTable | None = None,
        settings: LoopSettings | None = None,
    ) -> None:
        self.provider = provider
        self.fallback = fallback
        self.prices = prices or PriceTable()
        self.settings = settings or LoopSettings()

    async def run(self, step: Step[T], runner: ToolRunner) -> LoopResult[T]:
        """Converse until the model submits a valid answer; raises `AnswerMissing`,
        `StructuredOutputInvalid`, `ProviderUnavailable` or `ProviderRejected` otherwise."""
        return await _StepRun(self, step, runner).run()


@functools.cache
def _tracer() -> trace.Tracer:
    return trace.get_tracer(__name__)


def truncate(text: str, limit: int) -> tuple[str, bool]:
    """`text` cut to about `limit` characters (at a line break when one is near) with a marker
    telling the model how to ask for less; and whether it was cut."""
    if len(text) <= limit:
        return text, False
    cut = text[:limit]
    newline = cut.rfind("\n")
    if newline > limit // 2:
        cut = cut[:newline]
    marker = (
        f"\n[truncated: showing {len(cut)} of {len(text)} characters. Do not page through this; narrow the"
        " query instead: a smaller time window, filters (service, severity, a search pattern), or a lower limit.]"
    )
    return cut + marker, True


def _schema_errors(error: ValidationError, tool: str) -> tuple[str, list[str]]:
    problems = [
        f"{'.'.join(str(part) for part in item['loc']) or '(input)'}: {item['msg']}"
        for item in error.errors(include_url=False)
    ]
    shown = problems[:MAX_REPORTED_ERRORS]
    more = f"\n(and {len(problems) - len(shown)} more)" if len(problems) > len(shown) else ""
    text = (
        f"Your `{tool}` input does not match its schema, so nothing was submitted. Fix these and call"
        f" `{tool}` again with the whole answer:\n- " + "\n- ".join(shown) + more
    )
    return text, problems


def _tool_result(tool_use_id: str, text: str, *, is_error: bool) -> Block:
    return {"type": "tool_result", "tool_use_id": tool_use_id, "content": text, "is_error": is_error}


class _StepRun(Generic[T]):
    """The mutable state of one step's conversation."""

    def __init__(self, loop: AgentLoop, step: Step[T], runner: ToolRunner) -> None:
        self._settings = loop.settings
        self._prices = loop.prices
        self._provider = loop.provider
        self._fallback = loop.fallback
        self._model = step.model
        self._step = step
        self._runner = runner
        self._submit = step.submit_spec()
        self._tool_names = frozenset(spec.name for spec in step.tools)
        tools = [spec.definition() for spec in (*step.tools, self._submit)]
        tools[-1]["cache_control"] = dict(EPHEMERAL)
        self._tools: list[Block] = tools
        self._system: list[Block] = [{"type": "text", "text": step.system, "cache_control": dict(EPHEMERAL)}]
        self._messages: list[Message] = [
            {"role": "user", "content": [{"type": "text", "text": step.context, "cache_control": dict(EPHEMERAL)}]}
        ]
        self._seen: dict[str, str] = {}  # tool name + canonical arguments -> the call id holding the result
        self._call_of_use: dict[str, str] = {}  # tool_use id -> call id
        self._compacted: set[str] = set()  # tool_use ids whose results are stubs now
        self._call_ids: list[str] = []
        self._usage = Usage()
        self._by_model: dict[str, Usage] = {}
        self._trace: list[dict[str, Any]] = []
        self._turn = 0
        self._failures = 0
        self._force_next = False
        self._switched = False
        self._compactions = 0

    async def run(self) -> LoopResult[T]:
        limit = self._settings.max_turns
        while True:
            self._turn += 1
            if self._turn > limit and not self._force_next:
                raise AnswerMissing(
                    f"the model did not submit its answer within {limit} turn(s)",
                    details={"turns": limit, "tool_calls": len(self._call_ids)},
                )
            forced = self._turn >= limit or self._force_next
            self._force_next = False
            reply, record = await self._ask(forced)
            if reply.content:
                # An empty assistant message is invalid in a request; the nudge that follows is enough.
                self._messages.append({"role": "assistant", "content": reply.content})
            output = await self._answer(reply, record)
            if output is not None:
                return self._result(output)
            self._compact_if_needed(reply)

    def _request_messages(self) -> list[Message]:
        """The history with a rolling cache breakpoint on the newest block (the fourth and last
        breakpoint the API allows), so the next turn reads this one from the cache."""
        if len(self._messages) < 2:
            return list(self._messages)
        *head, last = self._messages
        content = list(last["content"])
        content[-1] = {**content[-1], "cache_control": dict(EPHEMERAL)}
        return [*head, {**last, "content": content}]

    async def _ask(self, forced: bool) -> tuple[ModelTurn, dict[str, Any]]:
        request = ModelRequest(
            model=self._model,
            system=self._system,
            tools=self._tools,
            messages=self._request_messages(),
            max_tokens=self._settings.max_tokens,
            temperature=self._settings.temperature,
            tool_choice={"type": "tool", "name": self._submit.name} if forced else None,
        )
        try:
            reply, priced = await self._complete(request, fallback=False)
        except ProviderUnavailable as exc:
            if self._fallback is None or self._switched:
                raise
            self._trace.append(
                {
                    "event": "provider_switch",
                    "turn": self._turn,
                    "from": {"provider": self._provider.name, "model": self._model},
                    "to": {"provider": self._fallback.provider.name, "model": self._fallback.model},
                    "reason": exc.message,
                }
            )
            self._provider, self._model, self._switched = self._fallback.provider, self._fallback.model, True
            reply, priced = await self._complete(replace(request, model=self._model), fallback=True)
        self._usage += priced
        self._by_model[self._model] = self._by_model.get(self._model, Usage()) + priced
        text = "\n".join(str(b.get("text", "")) for b in reply.content if b.get("type") == "text")
        record: dict[str, Any] = {
            "turn": self._turn,
            "provider": self._provider.name,
            "model": self._model,
            "forced": forced,
            "messages": len(request.messages),
            "stop_reason": reply.stop_reason,
            "request_id": reply.request_id,
            "usage": priced.as_dict(),
            "text": text[:TRACE_TEXT_CHARS],
            "tool_uses": [
                {"id": b.get("id"), "name": b.get("name"), "input": b.get("input")}
                for b in reply.content
                if b.get("type") == "tool_use"
            ],
            "tool_results": [],
        }
        self._trace.append(record)
        return reply, record

    async def _complete(self, request: ModelRequest, *, fallback: bool) -> tuple[ModelTurn, Usage]:
        """One model call as an `llm.call` span (model, provider, tokens, cost; never the prompt or
        the answer); returns the reply and its priced usage."""
        with _tracer().start_as_current_span(
            "llm.call",
            kind=SpanKind.CLIENT,
            attributes={
                "gen_ai.operation.name": "chat",
                "gen_ai.provider.name": self._provider.name,
                "gen_ai.request.model": request.model,
                "gen_ai.request.max_tokens": request.max_tokens,
                "pm.llm.fallback": fallback,
                "pm.llm.turn": self._turn,
                "pm.llm.forced": request.tool_choice is not None,
            },
        ) as span:
            reply = await self._provider.complete(request)
            priced = self._prices.priced(request.model, reply.usage)
            span.set_attributes(
                {
                    "gen_ai.response.model": reply.model,
                    "gen_ai.response.finish_reasons": [reply.stop_reason],
                    "gen_ai.usage.input_tokens": priced.input_tokens,
                    "gen_ai.usage.output_tokens": priced.output_tokens,
                    "gen_ai.usage.cache_creation.input_tokens": priced.cache_creation_input_tokens,
                    "gen_ai.usage.cache_read.input_tokens": priced.cache_read_input_tokens,
                    "pm.llm.cost_usd": priced.cost_usd,
                }
            )
        return reply, priced

    async def _answer(self, reply: ModelTurn, record: dict[str, Any]) -> T | None:
        """The validated answer if the model submitted one; otherwise run its tool calls and add
        their results (and any correction) as the next user message."""
        uses = [b for b in reply.content if b.get("type") == "tool_use"]
        submits = [u for u in uses if u.get("name") == self._submit.name]
        results: list[Block] = []
        problems: list[str] = []
        for use in submits:
            try:
                return self._step.output.model_validate(use.get("input") or {})
            except ValidationError as exc:
                text, problems = _schema_errors(exc, self._submit.name)
                results.append(_tool_result(str(use.get("id")), text, is_error=True))
        if problems:
            self._failures += 1
            record["schema_errors"] = problems
            if self._failures > 1:
                raise StructuredOutputInvalid(
                    f"the model's `{self._submit.name}` input failed its schema again after a corrective turn",
                    details={"errors": problems[:MAX_REPORTED_ERRORS]},
                )
            self._force_next = True
        for use in uses:
            if use.get("name") != self._submit.name:
                results.append(await self._call_tool(use, record))
        notes: list[Block] = []
        if reply.stop_reason == "max_tokens":
            notes.append({"type": "text", "text": "Your last reply hit the max_tokens limit and was cut off."})
        if not uses:
            notes.append(
                {
                    "type": "text",
                    "text": "Nothing written outside a tool call is read. Keep investigating with the tools,"
                    f" or call `{self._submit.name}` with your findings to finish.",
                }
            )
        self._messages.append({"role": "user", "content": [*results, *notes]})
        return None

    async def _call_tool(self, use: Block, record: dict[str, Any]) -> Block:
        use_id, name = str(use.get("id")), str(use.get("name"))
        raw = use.get("input")
        arguments: dict[str, Any] = dict(raw) if isinstance(raw, Mapping) else {}
        entry: dict[str, Any] = {"tool_use_id": use_id, "name": name, "call_id": "", "repeated": False}
        record["tool_results"].append(entry)
        if name not in self._tool_names:
            entry["is_error"] = True
            available = ", ".join(sorted(self._tool_names | {self._submit.name}))
            return _tool_result(use_id, f"There is no tool named {name!r}. The tools are: {available}.", is_error=True)
        key = f"{name}\x00{json.dumps(arguments, sort_keys=True, default=str)}"
        earlier = self._seen.get(key)
        if earlier is not None:
            entry.update(call_id=earlier, repeated=True, is_error=True)
            return _tool_result(
                use_id,
                f"Not run again: you already called {name} with exactly these arguments, as call_id {earlier},"
                " and its result is above. Use that result (cite it by that call_id), or change the arguments"
                " to ask for something new.",
                is_error=True,
            )
        result: ToolResult = await self._runner.call(name, arguments)
        body, cut = truncate(result.text, self._settings.max_result_chars)
        entry.update(call_id=result.call_id, is_error=result.is_error, chars=len(result.text), truncated=cut)
        if result.call_id:
            self._call_ids.append(result.call_id)
            self._seen[key] = result.call_id
            self._call_of_use[use_id] = result.call_id
        header = f"call_id: {result.call_id}" if result.call_id else "call_id: none (this result cannot be cited)"
        return _tool_result(use_id, f"{header}\n{body}", is_error=result.is_error)

    def _compact_if_needed(self, reply: ModelTurn) -> None:
        """Stub older tool results when the next prompt will be near the context limit: the last
        prompt, the reply, and what this turn added (estimated from its characters)."""
        added = sum(len(json.dumps(b)) for b in self._messages[-1]["content"]) // CHARS_PER_TOKEN
        expected = reply.usage.prompt_tokens + reply.usage.output_tokens + added
        threshold = int(self._settings.context_limit_tokens * self._settings.compact_at)
        if expected < threshold:
            return
        stubbed = self._compact()
        self._compactions += 1 if stubbed else 0
        self._trace.append(
            {
                "event": "compaction",
                "turn": self._turn,
                "expected_prompt_tokens": expected,
                "threshold": threshold,
                "stubbed_results": len(stubbed),
                "stubbed_call_ids": [c for c in stubbed if c],
            }
        )
        if not stubbed:
            # Nothing left to free: ask for the answer before the context overflows.
            self._force_next = True

    def _compact(self) -> list[str]:
        """Replace all but the newest tool results (after the investigation context, which is part
        of the cached prefix) with stubs; returns the call ids stubbed ("" for results without one)."""
        places = [
            (m, b)
            for m, message in enumerate(self._messages[1:], start=1)
            if message["role"] == "user"
            for b, block in enumerate(message["content"])
            if block.get("type") == "tool_result"
        ]
        older = places[: max(0, len(places) - self._settings.keep_recent_results)]
        stubbed: list[str] = []
        for m, b in older:
            block = self._messages[m]["content"][b]
            use_id = str(block["tool_use_id"])
            if use_id in self._compacted:
                continue
            call_id = self._call_of_use.get(use_id, "")
            stub = (
                f"[compacted: this result was removed to keep the conversation within the context limit. Cite it"
                f" as call_id {call_id}; call the tool again only if you need its details.]"
                if call_id
                else "[compacted: an earlier tool message was removed to keep the conversation within the context"
                " limit.]"
            )
            self._messages[m]["content"][b] = {**block, "content": stub}
            self._compacted.add(use_id)
            stubbed.append(call_id)
            # The model no longer holds this result, so asking for it again is allowed.
            for key in [k for k, v in self._seen.items() if call_id and v == call_id]:
                del self._seen[key]
        return stubbed

    def _result(self, output: T) -> LoopResult[T]:
        return LoopResult(
            output=output,
            usage=self._usage,
            usage_by_model=dict(self._by_model),
            call_ids=tuple(self._call_ids),
            turns=self._turn,
            trace=self._trace,
            provider=self._provider.name,
            model=self._model,
            switched_provider=self._switched,
            corrections=self._failures,
            compactions=self._compactions,
        )
