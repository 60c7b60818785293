"""gRPC servicers of the orchestrator: translate proto <-> domain, nothing else.

`registrations` takes the servicers the composition root built; a service not given answers
UNIMPLEMENTED through its generated base class.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from pm.analytics.v1 import analytics_pb2_grpc
from pm.domain.v1 import domain_pb2_grpc
from pm.investigation.v1 import investigation_pb2_grpc
from pm.knowledge.v1 import knowledge_pb2_grpc
from pm.ops.v1 import ops_pb2_grpc
from pm.query.v1 import query_pb2_grpc
from pm_grpc import ServiceRegistration


@dataclass(frozen=True)
class Servicers:
    """One servicer per public service of the orchestrator."""

    investigations: investigation_pb2_grpc.InvestigationServiceServicer
    domains: domain_pb2_grpc.DomainServiceServicer = field(default_factory=domain_pb2_grpc.DomainServiceServicer)
    onboarding: domain_pb2_grpc.OnboardingServiceServicer = field(
        default_factory=domain_pb2_grpc.OnboardingServiceServicer
    )
    knowledge: knowledge_pb2_grpc.KnowledgeServiceServicer = field(
        default_factory=knowledge_pb2_grpc.KnowledgeServiceServicer
    )
    meta: knowledge_pb2_grpc.MetaServiceServicer = field(default_factory=knowledge_pb2_grpc.MetaServiceServicer)
    analytics: analytics_pb2_grpc.AnalyticsServiceServicer = field(
        default_factory=analytics_pb2_grpc.AnalyticsServiceServicer
    )
    query: query_pb2_grpc.QueryServiceServicer = field(default_factory=query_pb2_grpc.QueryServiceServicer)
    health_check: ops_pb2_grpc.HealthCheckServiceServicer = field(
        default_factory=ops_pb2_grpc.HealthCheckServiceServicer
    )


def registrations(servicers: Servicers) -> list[ServiceRegistration]:
    """Every public service the orchestrator serves."""
    return [
        ServiceRegistration(
            "pm.investigation.v1.InvestigationService",
            investigation_pb2_grpc.add_InvestigationServiceServicer_to_server,
            servicers.investigations,
        ),
        ServiceRegistration(
            "pm.domain.v1.DomainService", domain_pb2_grpc.add_DomainServiceServicer_to_server, servicers.domains
        ),
        ServiceRegistration(
            "pm.domain.v1.OnboardingService",
            domain_pb2_grpc.add_OnboardingServiceServicer_to_server,
            servicers.onboarding,
        ),
        ServiceRegistration(
            "pm.knowledge.v1.KnowledgeService",
            knowledge_pb2_grpc.add_KnowledgeServiceServicer_to_server,
            servicers.knowledge,
        ),
        ServiceRegistration(
            "pm.knowledge.v1.MetaService", knowledge_pb2_grpc.add_MetaServiceServicer_to_server, servicers.meta
        ),
        ServiceRegistration(
            "pm.analytics.v1.AnalyticsService",
            analytics_pb2_grpc.add_AnalyticsServiceServicer_to_server,
            servicers.analytics,
        ),
        ServiceRegistration(
            "pm.query.v1.QueryService", query_pb2_grpc.add_QueryServiceServicer_to_server, servicers.query
        ),
        ServiceRegistration(
            "pm.ops.v1.HealthCheckService",
            ops_pb2_grpc.add_HealthCheckServiceServicer_to_server,
            servicers.health_check,
        ),
    ]
