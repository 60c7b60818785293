"""`python -m pm_ingest`: run the ingest service until SIGTERM."""

from pm_grpc import service_main
from pm_ingest.app import SPEC


def main() -> None:
    """Process entry point (also of the pm-ingest pex)."""
    service_main(SPEC)


if __name__ == "__main__":
    main()
