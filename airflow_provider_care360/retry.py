"""
The retry policy of Care360 tasks (Airflow >= 3.3).

``ScheduleAppointmentOperator`` attaches a :class:`Care360RetryPolicy` unless the task is given a
``retry_policy`` of its own (in its arguments or the DAG's ``default_args``; ``retry_policy=None``
switches it off). It decides from the Care360 error behind the failure, even one that user code
wrapped in another exception:

* not retryable (rejected, or ambiguous with ``check_existing=False``): fail now, whatever
  ``retries`` says;
* throttled (429): retry after the wait the API asked for (``Retry-After`` or ``X-RateLimit-Reset``),
  plus a little jitter so a mapped batch does not come back all at once, never past the cap (the
  smaller of ``max_delay`` and the task's ``max_retry_delay``). A named wait longer than the cap (a
  daily quota answers with hours) fails the task now, saying how long Care360 asked to wait, rather
  than spending its retries on answers that cannot change; nothing was booked, so it is safe to run
  again later. Without a named wait: an exponential backoff from the task's ``retry_delay`` with
  jitter, capped;
* ambiguous and retryable with a wait (an unclear answer the lookup could not settle yet): retry
  once the apply window has ended (or after ``retry_delay``, if longer), so the retry does not
  wait for it in a worker slot;
* anything else (not sent, errors that are not ours): no opinion, so the task's own ``retries``
  and ``retry_delay`` apply.

It only ever has an opinion about Care360 errors, so it composes with other policies::

    from airflow.providers.common.compat.sdk import ChainRetryPolicy

    retry_policy = ChainRetryPolicy([Care360RetryPolicy(), my_policy])

On Airflow < 3.3 there are no retry policies: the same outcomes hold through the exception types
alone, and a 429 waits the task's ``retry_delay``.
"""

from __future__ import annotations

from datetime import timedelta
from typing import TYPE_CHECKING, Any

from airflow_provider_care360.version_compat import AIRFLOW_V_3_3_PLUS

if TYPE_CHECKING:
    from airflow_provider_care360.exceptions import Care360Error

if TYPE_CHECKING or AIRFLOW_V_3_3_PLUS:
    from airflow.providers.common.compat.sdk import RetryDecision, RetryPolicy
else:  # Airflow < 3.3: importable, never attached
    RetryPolicy = object

__all__ = ["RETRY_POLICIES_SUPPORTED", "Care360RetryPolicy"]

#: Whether this Airflow has ``retry_policy`` on operators.
RETRY_POLICIES_SUPPORTED: bool = AIRFLOW_V_3_3_PLUS
_FALLBACK_BASE = 30.0


def _seconds(value: timedelta | float | None) -> float | None:
    if value is None:
        return None
    return value.total_seconds() if isinstance(value, timedelta) else float(value)


def find_care360_error(exception: BaseException | None) -> Care360Error | None:
    """The ``Care360Error`` behind an exception (itself, or along its cause/context chain)."""
    from airflow_provider_care360.exceptions import Care360Error

    seen: set[int] = set()
    while exception is not None and id(exception) not in seen:
        if isinstance(exception, Care360Error):
            return exception
        seen.add(id(exception))
        # As a traceback reads it: the explicit cause; else the exception being handled when this
        # one was raised, unless ``raise ... from None`` suppressed it.
        if exception.__cause__ is not None:
            exception = exception.__cause__
        elif exception.__suppress_context__ or not isinstance(exception, Exception):
            # A timeout or a termination (a BaseException) raised while an error was being handled
            # is about the task, not about that error: it does not carry its retry decision.
            exception = None
        else:
            exception = exception.__context__
    return None


class Care360RetryPolicy(RetryPolicy):
    """
    Retry policy for Care360 bookings.

    :param max_delay: the longest wait before a retry (default 1 hour); ``None`` for no cap but the
        task's own ``max_retry_delay``. A wait the API names beyond it fails the task at once.
    :param jitter: fraction of the wait added at random (a named wait) or taken off at random
        (backoff), default 0.1.
    :param backoff_base: first backoff step when a 429 names no wait; default: the task's
        ``retry_delay``.
    """

    def __init__(
        self,
        *,
        max_delay: timedelta | float | None = timedelta(hours=1),
        jitter: float = 0.1,
        backoff_base: timedelta | float | None = None,
    ) -> None:
        if not 0 <= jitter <= 1:
            raise ValueError(f"jitter must be between 0 and 1, got {jitter!r}")
        cap, base = _seconds(max_delay), _seconds(backoff_base)
        if cap is not None and not cap > 0:
            raise ValueError(f"max_delay must be more than 0 seconds, or None, got {max_delay!r}")
        if base is not None and not base >= 0:
            raise ValueError(f"backoff_base must be 0 seconds or more, or None, got {backoff_base!r}")
        self.max_delay = cap
        self.jitter = jitter
        self.backoff_base = base

    def __repr__(self) -> str:
        return (
            f"Care360RetryPolicy(max_delay={self.max_delay!r}, jitter={self.jitter!r}, "
            f"backoff_base={self.backoff_base!r})"
        )

    def cap_for(self, task: Any) -> float:
        """The longest wait for this task: ``max_delay`` or the task's ``max_retry_delay``, the smaller."""
        caps = [c for c in (self.max_delay, _seconds(getattr(task, "max_retry_delay", None))) if c]
        return min(caps) if caps else float("inf")

    def delay_for(
        self, error: Care360Error, try_number: int, task_retry_delay: float | None, cap: float | None = None
    ) -> float:
        """Seconds to wait after a 429 on try ``try_number`` (1-based), within ``cap``."""
        import random

        limit = cap if cap is not None else (self.max_delay or float("inf"))
        floor = min(1.0, limit)
        if error.retry_after is not None:
            wait = error.retry_after
            return min(limit, max(floor, wait + random.uniform(0, self.jitter * max(wait, 1.0))))
        base = next(b for b in (self.backoff_base, task_retry_delay, _FALLBACK_BASE) if b is not None)
        wait = min(limit, base * 2.0 ** min(max(0, try_number - 1), 64))
        return max(floor, wait * (1 - random.uniform(0, self.jitter)))

    def evaluate(
        self,
        exception: BaseException,
        try_number: int,
        max_tries: int,
        context: Any = None,
    ) -> RetryDecision:
        from airflow_provider_care360.exceptions import Outcome

        error = find_care360_error(exception)
        if error is None:
            return RetryDecision.default()
        if not error.retryable:
            return RetryDecision.fail(
                reason=f"Care360: {type(error).__name__} is not retried ({error.outcome})"
            )
        if error.outcome is Outcome.THROTTLED:
            task = context.get("task") if context else None
            cap = self.cap_for(task)
            if error.retry_after is not None and error.retry_after > cap:
                return RetryDecision.fail(
                    reason=(
                        f"Care360 rate limit (429) asks to wait {error.retry_after:.0f} s, longer than the "
                        f"longest wait allowed ({cap:.0f} s: max_delay or the task's max_retry_delay): "
                        "failing now rather than spending retries. Nothing was booked; the task is safe "
                        "to run again once that time has passed"
                    )
                )
            wait = self.delay_for(error, try_number, _seconds(getattr(task, "retry_delay", None)), cap)
            source = "Retry-After" if error.retry_after is not None else "backoff"
            return RetryDecision.retry(
                delay=timedelta(seconds=wait),
                reason=f"Care360 rate limit (429): retrying in {wait:.1f} s ({source})",
            )
        if error.outcome is Outcome.AMBIGUOUS and error.retry_after:
            # An unclear answer: the retry would wait in the task for the apply window to end; let
            # the scheduler wait instead, and free the worker slot meanwhile.
            task = context.get("task") if context else None
            own = _seconds(getattr(task, "retry_delay", None)) or 0.0
            wait = min(max(own, error.retry_after), self.cap_for(task))
            return RetryDecision.retry(
                delay=timedelta(seconds=wait),
                reason=f"Care360 answer unclear: retrying in {wait:.1f} s, after the apply window",
            )
        return RetryDecision.default()
