"""Object storage for reports, agent outputs and traces (S3 or any S3-compatible server).

`ObjectStore` is the port; `S3ObjectStore` the real adapter (boto3, versioned bucket, endpoint
configurable) and `InMemoryObjectStore` the in-memory one for domain unit tests.
"""

from pm_storage.store import (
    InMemoryObjectStore,
    ObjectRef,
    ObjectStore,
    S3ObjectStore,
    StoredObject,
    s3_store_from_settings,
)

__all__ = [
    "InMemoryObjectStore",
    "ObjectRef",
    "ObjectStore",
    "S3ObjectStore",
    "StoredObject",
    "s3_store_from_settings",
]
