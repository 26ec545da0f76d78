"""`facejobs`: run the stack (up, api, worker, reaper, migrate, keys) and use it (submit, jobs, ...).

The one command line joins two groups that live apart: `stack.commands` start the server's
processes, `client.commands` only talk HTTP through the SDK. `python -m stack.cli` is how the
stack starts its own children (the API, workers), so they run under the same interpreter.
"""

from __future__ import annotations

import argparse
import sys

from client import commands as client_commands
from stack import commands as stack_commands


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="facejobs", description=__doc__)
    p.add_argument("--url", help="API URL (default FACEJOBS_API_URL or the local stack)")
    p.add_argument("--api-key", help="API key (default FACEJOBS_API_KEY or the dev key of `facejobs up`)")
    sub = p.add_subparsers(dest="command", required=True)
    stack_commands.add_commands(sub)
    client_commands.add_commands(sub)
    return p


def main(argv: list[str] | None = None) -> int:
    import logging

    args = build_parser().parse_args(argv)
    logging.basicConfig(
        level=logging.INFO if args.command in stack_commands.SERVING else logging.WARNING,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    logging.getLogger("httpx").setLevel(logging.WARNING)
    return int(args.func(args) or 0)


if __name__ == "__main__":
    sys.exit(main())
