"""gRPC servicer of the registry: translate proto <-> domain, nothing else.

MCP sessions, the tool catalog and CallTool arrive with the registry issue; until then every
RegistryService RPC answers UNIMPLEMENTED (the generated base class).
"""

from pm.registry.v1 import registry_pb2_grpc


class RegistryServicer(registry_pb2_grpc.RegistryServiceServicer):
    """pm.registry.v1.RegistryService."""
