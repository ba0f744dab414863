"""The ``jobmetrics`` command: ``jobmetrics demo`` runs the demo job service;
``jobmetrics mixin`` writes alerts, recording rules and dashboards."""

from __future__ import annotations

import argparse
import sys
from typing import List, Optional

from . import __version__

__all__ = ["main"]


def main(argv: Optional[List[str]] = None) -> int:
    """Run the ``jobmetrics`` command line; returns the exit status."""
    parser = argparse.ArgumentParser(prog="jobmetrics", description="jobmetrics tools")
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    demo = sub.add_parser(
        "demo", help="run a small job service whose /metrics shows every family",
        description="A job service on the standard library: an HTTP API to submit "
                    "replication, gc and scan jobs, a queue, a worker pool and /metrics "
                    "on one port. It submits jobs itself, so every family moves.")
    demo.add_argument("--port", type=int, default=8001, help="port (0: any free one)")
    demo.add_argument("--addr", default="127.0.0.1", help="address to listen on")
    demo.add_argument("--duration", type=float, default=0.0,
                      help="stop after this many seconds (0: run until Ctrl-C)")
    demo.add_argument("--workers", type=int, default=4, help="worker threads")
    from .mixin import cli as mixin_cli

    mixin_cli.add_parser(sub)
    args = parser.parse_args(argv)
    if args.command == "mixin":
        return mixin_cli.run(args)
    if args.command != "demo":
        parser.print_help()
        return 2
    if not 0 <= args.port <= 65535:
        parser.error(f"--port {args.port} is not a port number (0-65535)")
    if args.duration < 0:
        parser.error("--duration must be >= 0")
    if args.workers < 1:
        parser.error("--workers must be >= 1")
    from .demo import run

    try:
        run(port=args.port, addr=args.addr, duration=args.duration, workers=args.workers)
    except OSError as exc:
        # A busy port is a usage error: one line, not a traceback.
        print(f"jobmetrics: error: {exc.strerror or exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
