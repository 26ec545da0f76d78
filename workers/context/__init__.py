"""The JobContext: what a kind's runner sees of the platform while it runs.

Every write is fenced by (job id, attempt, lease owner): a worker that lost its lease cannot touch
the new attempt's state. Bookkeeping failures (a progress write, a log line) are logged and never
raised into the job; losing the lease turns `should_stop()` on.

The context is written by role, one small module each, and joined here into the one facade that
runners and the ml callbacks use: `lease` (stop flags, lease renewal, progress), `checkpoints`,
`artifacts` and `inputs` (open_dataset, open_model), over `base` (identity, fenced and retried writes,
events and log lines).
"""

from __future__ import annotations

from workers.context.artifacts import Artifacts
from workers.context.base import DB_RETRY_SECONDS, DB_WRITE_TRIES
from workers.context.checkpoints import Checkpoints
from workers.context.inputs import Inputs
from workers.context.lease import LeaseAndProgress

__all__ = ["DB_RETRY_SECONDS", "DB_WRITE_TRIES", "JobContext"]


class JobContext(LeaseAndProgress, Checkpoints, Artifacts, Inputs):
    """The runner's handle on its job: progress, logs, cancel, checkpoints, artifacts, inputs.

    Built as `JobContext(job, attempt, worker_id, params, settings, store, device, workdir, drain_event)`.
    """
