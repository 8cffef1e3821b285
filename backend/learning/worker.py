"""The fit worker: ``python -m backend.learning.worker [--url REDIS_URL] [--queue NAME] [--burst]``.

Runs the fine-tuning jobs the app queues in Redis when ``REDIS_URL`` is set (:mod:`backend.learning.queue`): an RQ
:class:`rq.Worker` listening on one queue (default ``<REDIS_PREFIX without ':'>-fit``, i.e. ``fcfi-fit``). RQ forks a
work horse per job, which runs :func:`backend.learning.job.run_queued`: the same :class:`backend.learning.job.FitJob`
as the app's child process, one job at a time (``MODEL_DIR/fit/job.lock``), its progress and result in
``MODEL_DIR/fit/state.json``, then the serving version published in Redis for the replicas.

Configure it like a replica (the jobs use this process's settings): the same shared ``MODEL_DIR``,
``CHECKPOINT``/``MODEL_VERSION`` (a different base version fails the job), ``LABEL_STUDIO_*`` (images), the predictor
options, ``REDIS_URL``/``REDIS_PREFIX``, and the ``FIT_*`` settings of the jobs (``FIT_DEVICE``, ``FIT_THREADS``...).

On start (and after every job) it publishes the pointer ``MODEL_DIR/current.json``, so a Redis that restarted
empty learns the serving version again. SIGTERM lets the running job finish (RQ's warm shutdown); a worker killed
mid-job leaves the job ``running`` until a replica finds the job lock free and marks it ``failed``
(``interrupted``); nothing the replicas serve changes.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
import time

import redis
from rq import Queue, Worker

from backend.common.redis_client import connect, redact_url
from backend.learning.queue import SERIALIZER, publish_serving, queue_name
from backend.learning.versions import read_pointer
from backend.settings import Settings

log = logging.getLogger("backend.learning.worker")


def wait_for_redis(client: redis.Redis, url: str) -> None:
    """Block until Redis answers (compose may start the worker first); one log line, not one per try."""
    told = False
    while True:
        try:
            client.ping()
            return
        except redis.RedisError as exc:
            if not told:
                log.warning("waiting for Redis at %s (%s)", url, exc)
                told = True
            time.sleep(1.0)


def main(argv: list[str] | None = None) -> int:
    """Run the worker until it is stopped (``--burst``: until the queue is empty); 2 without a Redis URL."""
    settings = Settings.from_env()
    ap = argparse.ArgumentParser(prog="python -m backend.learning.worker", description=__doc__.split("\n\n")[0])
    ap.add_argument("--url", default=settings.redis_url, help="Redis URL (default: REDIS_URL)")
    ap.add_argument("--queue", default=queue_name(settings.redis_prefix),
                    help="RQ queue (default: REDIS_PREFIX without ':' + '-fit', as the app enqueues)")
    ap.add_argument("--name", default=None, help="worker name (default: RQ's random one)")
    ap.add_argument("--burst", action="store_true", help="exit when the queue is empty")
    args = ap.parse_args(argv)
    logging.basicConfig(level=settings.log_level, stream=sys.stderr,
                        format="%(asctime)s %(levelname)s %(name)s[%(process)d]: %(message)s")
    if not args.url:
        log.error("no Redis URL: set REDIS_URL or pass --url")
        return 2
    os.environ["REDIS_URL"] = args.url  # the work horses read their settings from the environment

    client = connect(args.url, None)  # RQ sets the socket timeout its blocking dequeue needs
    wait_for_redis(client, redact_url(args.url))
    pointer = read_pointer(settings.model_dir)
    if pointer is not None:
        publish_serving(client, settings.redis_prefix, pointer)
        log.info("published serving version %s in Redis", pointer["serving"])
    # Import the training code once, here: every forked work horse starts with it (torch and the model package) loaded.
    # Nothing runs on it before the fork (no threads, no CUDA context), so forking stays safe.
    import backend.learning.job  # noqa: F401

    worker = Worker([Queue(args.queue, connection=client, serializer=SERIALIZER)], connection=client, name=args.name,
                    serializer=SERIALIZER)
    log.info("fit worker %s on queue %r at %s (MODEL_DIR %s)", worker.name, args.queue, redact_url(args.url),
             settings.model_dir)
    worker.work(burst=args.burst, logging_level=settings.log_level, with_scheduler=False)
    return 0


if __name__ == "__main__":
    sys.exit(main())
