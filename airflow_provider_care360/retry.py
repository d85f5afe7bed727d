"""
The retry policy of Care360 tasks (Airflow >= 3.3).

``ScheduleAppointmentOperator`` attaches a :class:`Care360RetryPolicy` unless the task is given a
``retry_policy`` of its own. It decides from the error's outcome:

* rejected: fail now, whatever ``retries`` says (these are ``AirflowFailException`` anyway);
* throttled (429): retry after the wait the API asked for (``Retry-After`` or ``X-RateLimit-Reset``),
  plus a little jitter so a mapped batch does not come back all at once; without one, an exponential
  backoff from the task's ``retry_delay`` with jitter, capped at ``max_delay``;
* anything else (not sent, ambiguous with ``retry_on_ambiguous=True``, errors that are not ours):
  no opinion, so the task's own ``retries`` and ``retry_delay`` apply.

It only ever has an opinion about Care360 errors, so it composes with other policies::

    from airflow.providers.common.compat.sdk import ChainRetryPolicy

    retry_policy = ChainRetryPolicy([Care360RetryPolicy(), my_policy])

On Airflow < 3.3 there are no retry policies: the same outcomes hold through the exception types
alone, and a 429 waits the task's ``retry_delay``.
"""

from __future__ import annotations

from datetime import timedelta
from typing import TYPE_CHECKING, Any

from airflow.providers.common.compat.version_compat import AIRFLOW_V_3_3_PLUS

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
        exception = exception.__cause__ or exception.__context__
    return None


class Care360RetryPolicy(RetryPolicy):
    """
    Retry policy for Care360 bookings.

    :param max_delay: the longest wait before a retry (default 15 minutes), also for a longer
        ``Retry-After``.
    :param jitter: fraction of the wait added at random (``Retry-After``) or taken off at random
        (backoff), default 0.1.
    :param backoff_base: first backoff step when a 429 names no wait; default: the task's
        ``retry_delay``.
    """

    def __init__(
        self,
        *,
        max_delay: timedelta | float = timedelta(minutes=15),
        jitter: float = 0.1,
        backoff_base: timedelta | float | None = None,
    ) -> None:
        if not 0 <= jitter <= 1:
            raise ValueError(f"jitter must be between 0 and 1, got {jitter!r}")
        self.max_delay = _seconds(max_delay) or 0.0
        self.jitter = jitter
        self.backoff_base = _seconds(backoff_base)

    def __repr__(self) -> str:
        return (
            f"Care360RetryPolicy(max_delay={self.max_delay!r}, jitter={self.jitter!r}, "
            f"backoff_base={self.backoff_base!r})"
        )

    def delay_for(self, error: Care360Error, try_number: int, task_retry_delay: float | None) -> float:
        """Seconds to wait after a 429 on try ``try_number`` (1-based)."""
        import random

        if error.retry_after is not None:
            wait = min(self.max_delay, error.retry_after)
            return max(1.0, wait + random.uniform(0, self.jitter * max(wait, 1.0)))
        base: float = self.backoff_base or task_retry_delay or _FALLBACK_BASE
        wait = min(self.max_delay, base * 2.0 ** max(0, try_number - 1))
        return max(1.0, wait * (1 - random.uniform(0, self.jitter)))

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
        if error.outcome is Outcome.REJECTED:
            return RetryDecision.fail(reason=f"Care360 rejected the booking ({type(error).__name__})")
        if error.outcome is Outcome.THROTTLED:
            task = context.get("task") if context else None
            task_delay = _seconds(getattr(task, "retry_delay", None))
            wait = self.delay_for(error, try_number, task_delay)
            source = "Retry-After" if error.retry_after is not None else "backoff"
            return RetryDecision.retry(
                delay=timedelta(seconds=wait),
                reason=f"Care360 rate limit (429): retrying in {wait:.1f} s ({source})",
            )
        return RetryDecision.default()

    def serialize(self) -> dict[str, Any]:
        return {
            "__type": "Care360RetryPolicy",
            "max_delay": self.max_delay,
            "jitter": self.jitter,
            "backoff_base": self.backoff_base,
        }

    @classmethod
    def deserialize(cls, data: dict[str, Any]) -> Care360RetryPolicy:
        return cls(max_delay=data["max_delay"], jitter=data["jitter"], backoff_base=data.get("backoff_base"))
