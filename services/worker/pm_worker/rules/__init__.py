"""The rule reasoner: deterministic investigation playbooks that need no LLM (docs/reasoning.md)."""
