"""Starting an investigation: the row, its dedup claim, its outbox event and its audit row in one
statement, shared by every path that starts one (ingest's API and webhooks, the orchestrator's
health and post-deploy checks).

`new_investigation` builds the value with its InvestigationRequested event; `create_investigations`
and `create_alert` write it on a connection the caller owns (inside its transaction or not). The
outbox relay publishes the event after commit.
"""

from pm_intake.investigations import (
    MAX_ITERATIONS,
    MESSAGE_TYPE_REQUESTED,
    MODES,
    TRIGGERS,
    Active,
    ActiveConflict,
    AlertDuplicate,
    Audit,
    NewInvestigation,
    audit_arguments,
    create_alert,
    create_investigations,
    jsonable,
    new_investigation,
)

__all__ = [
    "MAX_ITERATIONS",
    "MESSAGE_TYPE_REQUESTED",
    "MODES",
    "TRIGGERS",
    "Active",
    "ActiveConflict",
    "AlertDuplicate",
    "Audit",
    "NewInvestigation",
    "audit_arguments",
    "create_alert",
    "create_investigations",
    "jsonable",
    "new_investigation",
]
