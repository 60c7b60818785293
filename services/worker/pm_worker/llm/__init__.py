"""The LLM reasoner's core: an agent tool loop over the Anthropic Messages API (with an
OpenAI-compatible fallback), schema-validated structured output, a citation checker and cost
accounting. It knows nothing of the registry or the orchestrator: tools come in through a
`ToolRunner`, findings go out as validated pydantic models."""
