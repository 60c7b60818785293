"""Test support: access to the real components that `./pm test` starts, and local stand-ins for
what is outside our control.

Integration tests talk to a real PostgreSQL 16 + pgvector, Redis, OpenBao and S3-compatible
server, and run real Envoy and service processes. `./pm test` starts them and exports where they
are (PM_TEST_* variables). A test that needs them and finds them missing fails with a message
saying so; it is never skipped. The LLM APIs are the exception: `running_fake_llm` serves the
Anthropic Messages and OpenAI Chat Completions APIs with scripted replies on loopback, so the real
SDK clients run against it. `running_otlp_collector` receives the spans services export over OTLP.
"""

from pm_testing.envoy import (
    RunningEdge,
    build_descriptor_set,
    edge_values,
    render_envoy_config,
    running_edge,
    running_envoy,
)
from pm_testing.fake_llm import FakeLLM, running_fake_llm
from pm_testing.otlp import CollectedSpan, OtlpCollector, running_otlp_collector
from pm_testing.postgres import PrivatePostgres, private_postgres
from pm_testing.processes import free_port, wait_for
from pm_testing.redis import PrivateRedis, private_redis
from pm_testing.services import ServiceProcess, health_status, running_service
from pm_testing.stack import StackEnv, fresh_bucket, fresh_database, stack_env, unique_name

__all__ = [
    "RunningEdge",
    "CollectedSpan",
    "FakeLLM",
    "OtlpCollector",
    "PrivatePostgres",
    "PrivateRedis",
    "ServiceProcess",
    "StackEnv",
    "build_descriptor_set",
    "free_port",
    "fresh_bucket",
    "fresh_database",
    "health_status",
    "private_postgres",
    "private_redis",
    "edge_values",
    "render_envoy_config",
    "running_edge",
    "running_envoy",
    "running_fake_llm",
    "running_otlp_collector",
    "running_service",
    "stack_env",
    "unique_name",
    "wait_for",
]
