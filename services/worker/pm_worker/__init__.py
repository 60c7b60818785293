"""The worker: runs one agent step at a time (LLM tool loop or rule reasoner)."""
