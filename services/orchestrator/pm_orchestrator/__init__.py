"""The orchestrator: the investigation state machine, the query API and the scheduler."""
