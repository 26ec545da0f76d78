"""Runners: one function per job kind, called with the JobContext by the task wrapper."""

from __future__ import annotations


class Preempted(Exception):
    """Raised by a runner that saved a checkpoint because `ctx.should_stop()` answered True."""
