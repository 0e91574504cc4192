"""Recovery: what the journal's unfinished jobs become at start-up.

Waiting and interrupted jobs are queued again (a job that was drawing during `max_attempts`
crashes is failed instead: it may be what kills the process); finished jobs whose reply was
never confirmed come back so that the frontends can still reply. Each row is replayed on its
own: one that cannot be read back, or is no longer a valid request, is failed and logged, and
the others go on.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable

from engine.errors import InvalidRequest
from engine.job import Estimates, Job
from engine.journal import Journal, UnreadableRow
from engine.request import GenerationRequest

log = logging.getLogger(__name__)


def replay(
    journal: Journal,
    *,
    engine: Estimates,
    resolve: Callable[[GenerationRequest], GenerationRequest],
    enqueue: Callable[[Job], None],
    clock: Callable[[], float],
    max_attempts: int,
) -> list[Job]:
    """Re-queue the journal's waiting and interrupted jobs through `enqueue`; returns the jobs
    that still need a reply (they have a reply_to), oldest first.

    `resolve` checks a request again as submit would (the model may be gone, the limits
    changed); `clock` is the engine's clock, for the jobs' `queued_at`.
    """
    requeued: list[Job] = []
    for record in journal.pending():
        if isinstance(record, UnreadableRow):
            _fail_unreadable(journal, record)
            continue
        if record.state == "running" and record.attempts >= max_attempts:
            log.error(
                "job %d was drawing during %d crashes: failing it", record.id, record.attempts
            )
            journal.mark_failed(
                record.id, "This drawing stopped the bot, so it was not tried again."
            )
            continue
        try:
            request = resolve(record.request)
        except InvalidRequest as e:
            log.warning("job %d is no longer a valid request (%s): failing it", record.id, e)
            journal.mark_failed(record.id, str(e))
            continue
        if record.state == "running":
            journal.mark_queued(record.id)
        waited = max(0.0, time.time() - record.submitted_at)
        job = Job(
            engine,
            id=record.id,
            request=request,
            reply_to=record.reply_to,
            submitted_at=record.submitted_at,
            queued_at=clock() - waited,
        )
        enqueue(job)
        requeued.append(job)
    finished: list[Job] = []
    for record in journal.undelivered():
        if isinstance(record, UnreadableRow):
            _fail_unreadable(journal, record)
        else:
            finished.append(Job.finished(engine, record, queued_at=clock()))
    recovered = [job for job in requeued if job.reply_to] + finished
    if requeued or finished:
        log.info(
            "journal: %d job(s) queued again, %d finished job(s) still to reply to",
            len(requeued),
            len(finished),
        )
    return sorted(recovered, key=lambda job: job.id)


def _fail_unreadable(journal: Journal, row: UnreadableRow) -> None:
    # Failing it (rather than skipping it) stops it from being logged again at every start;
    # its text stays in the journal for whoever wants to look.
    log.error("journal: job %d cannot be read back (%s): failing it", row.id, row.reason)
    journal.mark_unreadable(row.id, row.reason)
