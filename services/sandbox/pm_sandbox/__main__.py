"""`python -m pm_sandbox --data <snapshot folder> [--transport stdio|streamable-http] [--port N]`."""

from __future__ import annotations

import argparse
import sys

from pm_sandbox.data import load_incident
from pm_sandbox.server import build_server


def main() -> None:
    """Serve one incident snapshot until stopped."""
    parser = argparse.ArgumentParser(prog="pm-sandbox", description=__doc__)
    parser.add_argument("--data", required=True, help="snapshot folder in the RootCauseBench layout")
    parser.add_argument("--transport", choices=("stdio", "streamable-http"), default="stdio")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8765)
    args = parser.parse_args()
    try:
        incident = load_incident(args.data)
    except (OSError, ValueError) as exc:
        sys.stderr.write(f"pm-sandbox: {exc}\n")
        sys.exit(2)
    server = build_server(incident)
    if args.transport == "stdio":
        server.run("stdio")
    else:
        server.run("streamable-http", host=args.host, port=args.port)


if __name__ == "__main__":
    main()
