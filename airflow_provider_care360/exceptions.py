"""
Typed errors raised by the Care360 provider.

Every error is a :class:`Care360Error`. Each class stands for one outcome of a booking attempt,
and one rule decides what Airflow does with the task: an error whose ``retryable`` is ``False`` is
an ``AirflowFailException`` (the task fails at once, whatever ``retries`` says); the others are
retried with the task's retries. ``Care360RetryPolicy`` applies the same rule to a Care360 error
that user code wrapped in another exception.

========================================  ==========  =======================================
class                                     outcome     task
========================================  ==========  =======================================
:class:`Care360ValidationError`           rejected    fails at once (``AirflowFailException``)
:class:`Care360BadRequestError`           rejected    fails at once
:class:`Care360AuthError`                 rejected    fails at once
:class:`Care360RateLimitError`            throttled   retried by Airflow
:class:`Care360NotSentError`              not sent    retried by Airflow
:class:`Care360AmbiguousError`            ambiguous   fails at once (booking may exist)
:class:`Care360AmbiguousRetryableError`   ambiguous   retried (the next try looks before it books)
:class:`Care360LookupError`               not sent    retried (a lookup failed; nothing was sent)
:class:`Care360LookupUnusableError`       rejected    fails at once (the lookup cannot be used)
========================================  ==========  =======================================

A booking request is not idempotent, so "ambiguous" (the request may have reached Care360) must
never be retried blindly: a retry could book the invitee twice. ``ScheduleAppointmentOperator``
settles an ambiguous outcome with a lookup (``check_existing=True``), and every try looks before
it books, which is what makes its retries safe.
"""

from __future__ import annotations

from typing import Any, ClassVar

from airflow.providers.common.compat.sdk import AirflowException, AirflowFailException

from airflow_provider_care360.outcomes import Outcome

__all__ = [
    "Care360AmbiguousError",
    "Care360AmbiguousRetryableError",
    "Care360AuthError",
    "Care360BadRequestError",
    "Care360ConnectionConfigError",
    "Care360Error",
    "Care360LookupAmbiguousError",
    "Care360LookupError",
    "Care360LookupUnusableError",
    "Care360NotSentError",
    "Care360RateLimitError",
    "Care360RejectedError",
    "Care360ValidationError",
    "Outcome",
]


class Care360Error(AirflowException):
    """
    Base class of every error raised by this provider.

    :param message: the text a person reads in the task log.
    :param http_status: the HTTP status of the response, if there was one. (Not ``status_code``:
        that is ``AirflowException``'s, the status Airflow's API server would answer with.)
    :param api_message: the API's ``message`` field, if the body had one.
    :param api_error: the API's ``error`` field, if the body had one.
    :param retry_after: seconds the API asked the client to wait, if it said.
    :param response: the API's JSON answer (an object), if one was received, with the API key
        removed and the invitee's personal data masked wherever the server echoed them.
    :param summary: what happened, in a few words and without advice (``"Care360 answered 504
        (Gateway Timeout)"``), for messages that build on this error; defaults to ``message``.
    """

    outcome: ClassVar[Outcome]
    #: Whether a later try may succeed and is safe: ``False`` makes the task fail at once.
    retryable: ClassVar[bool] = True

    def __init__(
        self,
        message: str,
        *,
        http_status: int | None = None,
        api_message: str | None = None,
        api_error: str | None = None,
        retry_after: float | None = None,
        response: dict[str, Any] | None = None,
        summary: str | None = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        self.summary = summary or message
        self.http_status = http_status
        self.api_message = api_message
        self.api_error = api_error
        self.retry_after = retry_after
        self.response = response

    def __str__(self) -> str:
        return self.message

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.message!r}, http_status={self.http_status!r})"

    def _fields(self) -> dict[str, Any]:
        return {
            "message": self.message,
            "http_status": self.http_status,
            "api_message": self.api_message,
            "api_error": self.api_error,
            "retry_after": self.retry_after,
            "response": self.response,
            "summary": self.summary,
        }

    def serialize(self) -> tuple[str, tuple[Any, ...], dict[str, Any]]:
        """For Airflow's ``BaseSerialization``: the class and the keyword arguments that rebuild it."""
        cls = type(self)
        return f"{cls.__module__}.{cls.__name__}", (), self._fields()

    def __reduce__(self):  # type: ignore[no-untyped-def]
        # Keep keyword-only fields when the error crosses a process boundary (pickle).
        return (_rebuild, (type(self), self.serialize()[2]))


def _rebuild(cls: type[Care360Error], kwargs: dict[str, Any]) -> Care360Error:
    return cls(**kwargs)


class Care360RejectedError(AirflowFailException, Care360Error):
    """The request was refused and retrying it cannot help; nothing was booked."""

    outcome = Outcome.REJECTED
    retryable = False


class Care360ValidationError(Care360RejectedError):
    """
    The booking fields failed validation before any request was sent.

    :param problems: one line per bad field, each naming the field, the value (masked where it is
        personal data) and what is allowed.
    """

    def __init__(self, problems: list[str], **_: Any) -> None:
        self.problems = list(problems)
        lines = "\n".join(f"  - {p}" for p in self.problems)
        super().__init__(
            f"Care360 booking not sent: {len(self.problems)} invalid field(s). Nothing was booked; "
            f"fix the input and run the task again.\n{lines}"
        )

    def _fields(self) -> dict[str, Any]:
        return {"problems": self.problems}


class Care360ConnectionConfigError(Care360RejectedError):
    """The Airflow connection is unusable (no API key, unknown environment, malformed host)."""


class Care360BadRequestError(Care360RejectedError):
    """Care360 rejected the request (400, 403, 404, 422 or a 200 with ``success: false``)."""


class Care360AuthError(Care360RejectedError):
    """Care360 rejected the API key (401)."""


class Care360RateLimitError(Care360Error):
    """Care360 answered 429: nothing was booked, and a later try may succeed."""

    outcome = Outcome.THROTTLED


class Care360NotSentError(Care360Error):
    """The request provably never reached Care360 (DNS, refused connection, connect timeout, 408)."""

    outcome = Outcome.NOT_SENT


class Care360LookupError(Care360Error):
    """
    A lookup of existing appointments failed in a way a retry can mend (5xx, timeout, reset).

    A lookup is a read: retrying it is always safe. The booking it guarded was not sent.
    """

    outcome = Outcome.NOT_SENT


class Care360LookupUnusableError(Care360RejectedError):
    """
    The lookup of existing appointments cannot be used with this key or this API (403, no such
    endpoint, an answer that is not the documented shape). Nothing was booked.
    """


class Care360AmbiguousError(AirflowFailException, Care360Error):
    """
    The request may have reached Care360, so the booking may or may not exist.

    The task fails at once rather than risk booking the invitee twice. Check the provider's
    calendar (or Care360) for the invitee before running the task again. (The operator settles
    this with a lookup unless it was created with ``check_existing=False``.)
    """

    outcome = Outcome.AMBIGUOUS
    retryable = False


class Care360LookupAmbiguousError(Care360AmbiguousError):
    """
    The lookup answered, but what it says cannot be read safely: an appointment at the instant with
    a status the provider does not know, an appointment whose start cannot be read, or an answer that
    looks paged. Nothing was booked by this try; the appointment may or may not exist. The task
    fails at once (fail closed) rather than book on a reading it cannot trust.
    """


class Care360AmbiguousRetryableError(Care360Error):
    """
    The request may have reached Care360, and a retry is safe or was asked for.

    Raised instead of :class:`Care360AmbiguousError` when the next try looks the invitee up before
    it books (``check_existing=True``, the default), or when the operator was created with
    ``check_existing=False, retry_on_ambiguous=True``, where a retry may book the invitee a second
    time.
    """

    outcome = Outcome.AMBIGUOUS
