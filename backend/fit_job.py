"""Compatibility name for RQ jobs queued before the backend was split into packages.

RQ stores a job's function by its dotted path, and fit jobs used to be enqueued as ``backend.fit_job.run_queued``;
a Redis holding such a job across the upgrade still runs it through this name. New jobs name
:func:`backend.learning.job.run_queued` (:data:`backend.learning.queue.JOB_FUNCTION`). Nothing else belongs here.
"""

from backend.learning.job import run_queued

__all__ = ["run_queued"]
