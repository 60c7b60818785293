"""Stream and consumer-group names. Producers and consumers use these constants, nothing else."""

# InvestigationRequested: ingest and the scheduler (through the outbox) -> orchestrator.
STREAM_INVESTIGATIONS = "pm.investigations"
# InvestigationRequested for alerts (PagerDuty, Grafana, health and post-deploy checks): the
# orchestrator reads this lane before pm.investigations, so alerts go ahead of tickets and batches.
STREAM_INVESTIGATIONS_URGENT = "pm.investigations.urgent"
# AgentTask: orchestrator -> workers.
STREAM_AGENT_TASKS = "pm.agent.tasks"
# AgentResult: workers -> orchestrator.
STREAM_AGENT_RESULTS = "pm.agent.results"
# InvestigationProgress: orchestrator -> Watch streams of every orchestrator replica.
STREAM_INVESTIGATION_EVENTS = "pm.investigation.events"
# DeployRecorded: ingest -> orchestrator (post-deploy checks).
STREAM_DEPLOYS = "pm.deploys"

ALL_STREAMS = (
    STREAM_INVESTIGATIONS,
    STREAM_INVESTIGATIONS_URGENT,
    STREAM_AGENT_TASKS,
    STREAM_AGENT_RESULTS,
    STREAM_INVESTIGATION_EVENTS,
    STREAM_DEPLOYS,
)

GROUP_ORCHESTRATOR = "orchestrator"
GROUP_WORKERS = "workers"
GROUP_WATCHERS = "watchers"

DEAD_LETTER_SUFFIX = ".dead"
