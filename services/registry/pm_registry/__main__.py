"""`python -m pm_registry`: run the registry service until SIGTERM."""

from pm_grpc import service_main
from pm_registry.app import SPEC


def main() -> None:
    """Process entry point (also of the pm-registry pex)."""
    service_main(SPEC)


if __name__ == "__main__":
    main()
