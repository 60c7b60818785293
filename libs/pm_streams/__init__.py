"""Redis Streams through faststream: stream and group names, publish, subscribe, reclaim.

Delivery is at least once. A handler that returns normally acknowledges its message; one that
raises leaves it pending, and a reaper claims it again after `reclaim_idle_ms` (the worker or
orchestrator that held it may have died). After `max_deliveries` attempts the message goes to
`<stream>.dead` with the last error, so one poison message cannot block a group forever. Every
message carries W3C trace context: publishing and handling are spans of the producer's trace.
"""

from pm_streams.bus import Delivery, Handler, Outgoing, StreamBus
from pm_streams.names import (
    ALL_STREAMS,
    DEAD_LETTER_SUFFIX,
    GROUP_ORCHESTRATOR,
    GROUP_WATCHERS,
    GROUP_WORKERS,
    STREAM_AGENT_RESULTS,
    STREAM_AGENT_TASKS,
    STREAM_DEPLOYS,
    STREAM_INVESTIGATION_EVENTS,
    STREAM_INVESTIGATIONS,
    STREAM_INVESTIGATIONS_URGENT,
)

__all__ = [
    "ALL_STREAMS",
    "DEAD_LETTER_SUFFIX",
    "GROUP_ORCHESTRATOR",
    "GROUP_WATCHERS",
    "GROUP_WORKERS",
    "STREAM_AGENT_RESULTS",
    "STREAM_AGENT_TASKS",
    "STREAM_DEPLOYS",
    "STREAM_INVESTIGATIONS",
    "STREAM_INVESTIGATIONS_URGENT",
    "STREAM_INVESTIGATION_EVENTS",
    "Delivery",
    "Handler",
    "Outgoing",
    "StreamBus",
]
