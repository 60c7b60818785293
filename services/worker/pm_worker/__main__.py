"""`python -m pm_worker`: run the worker service until SIGTERM."""

from pm_grpc import service_main
from pm_worker.app import SPEC


def main() -> None:
    """Process entry point (also of the pm-worker pex)."""
    service_main(SPEC)


if __name__ == "__main__":
    main()
