"""gRPC servicers of the orchestrator: translate proto <-> domain, nothing else.

InvestigationService's reads are served by pm_orchestrator.queries; the other RPCs (watch,
cancel, bundle, feedback, domains, knowledge, analytics, query) arrive with later slices of the
engine and memory issues and answer UNIMPLEMENTED (the generated base classes) until then.
"""

from pm.analytics.v1 import analytics_pb2_grpc
from pm.domain.v1 import domain_pb2_grpc
from pm.investigation.v1 import investigation_pb2_grpc
from pm.knowledge.v1 import knowledge_pb2_grpc
from pm.ops.v1 import ops_pb2_grpc
from pm.query.v1 import query_pb2_grpc
from pm_grpc import ServiceRegistration


class DomainServicer(domain_pb2_grpc.DomainServiceServicer):
    """pm.domain.v1.DomainService."""


class OnboardingServicer(domain_pb2_grpc.OnboardingServiceServicer):
    """pm.domain.v1.OnboardingService."""


class KnowledgeServicer(knowledge_pb2_grpc.KnowledgeServiceServicer):
    """pm.knowledge.v1.KnowledgeService."""


class MetaServicer(knowledge_pb2_grpc.MetaServiceServicer):
    """pm.knowledge.v1.MetaService."""


class AnalyticsServicer(analytics_pb2_grpc.AnalyticsServiceServicer):
    """pm.analytics.v1.AnalyticsService."""


class QueryServicer(query_pb2_grpc.QueryServiceServicer):
    """pm.query.v1.QueryService."""


class HealthCheckServicer(ops_pb2_grpc.HealthCheckServiceServicer):
    """pm.ops.v1.HealthCheckService."""


def registrations(investigations: investigation_pb2_grpc.InvestigationServiceServicer) -> list[ServiceRegistration]:
    """Every public service the orchestrator serves."""
    return [
        ServiceRegistration(
            "pm.investigation.v1.InvestigationService",
            investigation_pb2_grpc.add_InvestigationServiceServicer_to_server,
            investigations,
        ),
        ServiceRegistration(
            "pm.domain.v1.DomainService", domain_pb2_grpc.add_DomainServiceServicer_to_server, DomainServicer()
        ),
        ServiceRegistration(
            "pm.domain.v1.OnboardingService",
            domain_pb2_grpc.add_OnboardingServiceServicer_to_server,
            OnboardingServicer(),
        ),
        ServiceRegistration(
            "pm.knowledge.v1.KnowledgeService",
            knowledge_pb2_grpc.add_KnowledgeServiceServicer_to_server,
            KnowledgeServicer(),
        ),
        ServiceRegistration(
            "pm.knowledge.v1.MetaService", knowledge_pb2_grpc.add_MetaServiceServicer_to_server, MetaServicer()
        ),
        ServiceRegistration(
            "pm.analytics.v1.AnalyticsService",
            analytics_pb2_grpc.add_AnalyticsServiceServicer_to_server,
            AnalyticsServicer(),
        ),
        ServiceRegistration(
            "pm.query.v1.QueryService", query_pb2_grpc.add_QueryServiceServicer_to_server, QueryServicer()
        ),
        ServiceRegistration(
            "pm.ops.v1.HealthCheckService", ops_pb2_grpc.add_HealthCheckServiceServicer_to_server, HealthCheckServicer()
        ),
    ]
