"""gRPC servicers of the ingest service: translate proto <-> domain, nothing else.

Intake (investigate, batch, webhooks) arrives with the intake issue; until then every
IngestService RPC answers UNIMPLEMENTED (the generated base class).
"""

from pm.ingest.v1 import ingest_pb2_grpc


class IngestServicer(ingest_pb2_grpc.IngestServiceServicer):
    """pm.ingest.v1.IngestService."""
