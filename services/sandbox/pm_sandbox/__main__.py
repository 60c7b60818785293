"""`python -m pm_sandbox --data <snapshot folder> [--transport stdio|streamable-http|sse] [--port N]`.

Over HTTP, `--access-key-header NAME` makes every request carry that header with the value of the
environment variable SANDBOX_ACCESS_KEY (401 otherwise), like a real server behind an access key.
`--published FILE` adds the write tools (`add_comment`, `post_message`), which append each call to
FILE as a JSON line. `--repository DIR` adds the read-only code tools (`list_files`,
`get_file_contents`) over the source tree DIR; their paths never leave DIR.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

import uvicorn

from pm_sandbox.data import load_incident
from pm_sandbox.repository import Repository
from pm_sandbox.server import build_server, http_app

ACCESS_KEY_ENV = "SANDBOX_ACCESS_KEY"


def main() -> None:
    """Serve one incident snapshot until stopped."""
    parser = argparse.ArgumentParser(prog="pm-sandbox", description=__doc__)
    parser.add_argument("--data", required=True, help="snapshot folder in the RootCauseBench layout")
    parser.add_argument("--transport", choices=("stdio", "streamable-http", "sse"), default="stdio")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8765)
    parser.add_argument("--access-key-header", help=f"require this header to equal ${ACCESS_KEY_ENV} (HTTP only)")
    parser.add_argument("--delay-ms", type=int, default=0, help="answer every tool call this much later (fault tests)")
    parser.add_argument("--published", type=Path, help="offer the write tools, appending their calls to this file")
    parser.add_argument("--repository", type=Path, help="offer the read-only code tools over this source tree")
    args = parser.parse_args()
    try:
        incident = load_incident(args.data)
        repository = Repository(args.repository) if args.repository is not None else None
    except (OSError, ValueError) as exc:
        sys.stderr.write(f"pm-sandbox: {exc}\n")
        sys.exit(2)
    if not 0 <= args.delay_ms <= 600_000:
        sys.stderr.write("pm-sandbox: --delay-ms must be between 0 and 600000\n")
        sys.exit(2)
    server = build_server(incident, delay_seconds=args.delay_ms / 1000, published=args.published, repository=repository)
    if args.transport == "stdio":
        server.run("stdio")
        return
    access_key = None
    if args.access_key_header:
        value = os.environ.get(ACCESS_KEY_ENV, "")
        if not value:
            sys.stderr.write(f"pm-sandbox: --access-key-header needs {ACCESS_KEY_ENV} to be set\n")
            sys.exit(2)
        access_key = (args.access_key_header, value)
    app = http_app(server, args.transport, access_key)
    uvicorn.run(app, host=args.host, port=args.port, log_level="warning")


if __name__ == "__main__":
    main()
