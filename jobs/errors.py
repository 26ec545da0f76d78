"""Named exceptions shared by the API and the workers."""

from __future__ import annotations


class JobInputError(ValueError):
    """The job's params or data are wrong: the job fails at once and is not retried."""


class TransientError(RuntimeError):
    """A store or network hiccup: the operation is retried with backoff."""
