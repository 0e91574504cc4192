"""Trying a Bot API call again: after flood control, a 5xx, or the network failing.

`send_retrying` waits out RetryAfter as Telegram asks, and transient failures with capped
exponential backoff and jitter (`RETRY`) for a bounded time; then the call's error is raised.
It tries again only what cannot become a duplicate (see `may_be_done`).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from datetime import timedelta
from typing import TypeVar

import httpx
from telegram.error import BadRequest, NetworkError, RetryAfter, TelegramError

from bot.backoff import Backoff

log = logging.getLogger(__name__)

SEND_ATTEMPTS = 5  # flood-control waits before a reply is given up
T = TypeVar("T")


def retry_seconds(error: RetryAfter) -> float:
    """RetryAfter.retry_after in seconds: an int, or a timedelta with PTB_TIMEDELTA=true."""
    value = error.retry_after
    return value.total_seconds() if isinstance(value, timedelta) else float(value)


RETRY = Backoff(platform="telegram")

# Transport failures after which the request cannot have reached Telegram whole: nothing was
# done, whatever the call (httpx is PTB's HTTP client; its error is the NetworkError's cause).
_UNSENT = (
    httpx.ConnectError,
    httpx.ConnectTimeout,
    httpx.PoolTimeout,
    httpx.WriteError,
    httpx.WriteTimeout,
)


def may_be_done(error: NetworkError) -> bool:
    """Whether Telegram may have done a call that failed with `error` (TimedOut is one).

    No when Telegram answered with an error (a 5xx: PTB raises a NetworkError without an httpx
    cause) or the request never got there whole; yes when it went out and no answer came back
    (a read timeout, a dropped connection): Telegram may still have done it.
    """
    cause = error.__cause__
    if cause is None or isinstance(cause, TelegramError):
        return False
    return not isinstance(cause, _UNSENT)


async def send_retrying(
    call: Callable[[], Awaitable[T]], what: str, *, idempotent: bool = False
) -> T:
    """`call()`, tried again after flood control (the wait Telegram asks for, SEND_ATTEMPTS
    tries in all) and after transient failures (a 5xx, the network: RETRY's backoff); then
    the last error is raised.

    Which calls are safe to try again: any that surely did nothing (Telegram answered with an
    error, or the request never got there). One that may have been done (it went out and no
    answer came) only if it is `idempotent`: an edit or a delete done twice is done once, but
    a sendPhoto sent twice is two photos, so such a failure of a send is raised at once.
    """
    waits = RETRY.waits(asyncio.get_running_loop().time)
    floods = failures = 0
    while True:
        try:
            return await call()
        except RetryAfter as e:
            floods += 1
            if floods >= SEND_ATTEMPTS:
                raise
            wait = retry_seconds(e)
            log.info("flood control on %s: trying again in %.1f s", what, wait)
        except NetworkError as e:  # BadRequest is one: Telegram refused the call itself
            if isinstance(e, BadRequest) or not idempotent and may_be_done(e):
                raise
            failures += 1
            if (backoff := next(waits, None)) is None:
                raise
            wait = backoff
            log.warning("%s failed (%s): try %d in %.1f s", what, e, failures + 1, wait)
        await asyncio.sleep(wait)
