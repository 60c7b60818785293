"""`python -m pm_orchestrator`: run the orchestrator service until SIGTERM."""

from pm_grpc import service_main
from pm_orchestrator.app import SPEC


def main() -> None:
    """Process entry point (also of the pm-orchestrator pex)."""
    service_main(SPEC)


if __name__ == "__main__":
    main()
