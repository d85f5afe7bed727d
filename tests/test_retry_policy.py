"""Care360RetryPolicy decisions (Airflow >= 3.3), and the exception-type fallback everywhere."""

from __future__ import annotations

from datetime import timedelta
from types import SimpleNamespace

import pytest

from airflow_provider_care360.exceptions import (
    Care360AmbiguousError,
    Care360AmbiguousRetryableError,
    Care360AuthError,
    Care360NotSentError,
    Care360RateLimitError,
)
from airflow_provider_care360.retry import RETRY_POLICIES_SUPPORTED, Care360RetryPolicy, find_care360_error

needs_policies = pytest.mark.skipif(
    not RETRY_POLICIES_SUPPORTED, reason="retry_policy arrived in Airflow 3.3"
)


def test_which_errors_airflow_retries_without_any_policy() -> None:
    from airflow.providers.common.compat.sdk import AirflowFailException

    assert issubclass(Care360AuthError, AirflowFailException)
    assert issubclass(Care360AmbiguousError, AirflowFailException)
    for retried in (Care360RateLimitError, Care360NotSentError, Care360AmbiguousRetryableError):
        assert not issubclass(retried, AirflowFailException)


def test_the_error_is_found_behind_a_wrapper() -> None:
    inner = Care360RateLimitError("429", retry_after=3)
    try:
        try:
            raise inner
        except Care360RateLimitError as exc:
            raise RuntimeError("wrapped") from exc
    except RuntimeError as outer:
        assert find_care360_error(outer) is inner
    assert find_care360_error(ValueError("x")) is None


def _decide(error: BaseException, try_number: int = 1, retry_delay: float = 10.0, **policy: object):  # type: ignore[no-untyped-def]
    context = {"task": SimpleNamespace(retry_delay=timedelta(seconds=retry_delay))}
    return Care360RetryPolicy(**policy).evaluate(error, try_number, 5, context)  # type: ignore[arg-type]


@needs_policies
def test_retry_after_is_honoured_with_a_little_jitter() -> None:
    from airflow.providers.common.compat.sdk import RetryAction

    for _ in range(50):
        decision = _decide(Care360RateLimitError("429", retry_after=20))
        assert decision.action is RetryAction.RETRY
        assert 20 <= decision.retry_delay.total_seconds() <= 22
        assert "Retry-After" in decision.reason


@needs_policies
def test_retry_after_is_capped() -> None:
    decision = _decide(Care360RateLimitError("429", retry_after=86400), max_delay=600, jitter=0)
    assert decision.retry_delay == timedelta(seconds=600)


@needs_policies
def test_backoff_doubles_from_the_task_retry_delay_and_is_capped() -> None:
    waits = [
        _decide(Care360RateLimitError("429"), try_number=n, jitter=0).retry_delay.total_seconds()
        for n in range(1, 9)
    ]
    assert waits == [10, 20, 40, 80, 160, 320, 640, 900]
    jittered = _decide(Care360RateLimitError("429"), try_number=3).retry_delay.total_seconds()
    assert 36 <= jittered <= 40


@needs_policies
def test_other_outcomes() -> None:
    from airflow.providers.common.compat.sdk import RetryAction

    assert _decide(Care360AuthError("401")).action is RetryAction.FAIL
    assert _decide(Care360NotSentError("refused")).action is RetryAction.DEFAULT
    assert _decide(Care360AmbiguousRetryableError("502")).action is RetryAction.DEFAULT
    assert _decide(KeyError("not ours")).action is RetryAction.DEFAULT


@needs_policies
def test_composes_with_another_policy() -> None:
    from airflow.providers.common.compat.sdk import (
        ChainRetryPolicy,
        ExceptionRetryPolicy,
        RetryAction,
        RetryRule,
    )

    chain = ChainRetryPolicy(
        [
            Care360RetryPolicy(),
            ExceptionRetryPolicy(rules=[RetryRule(exception=KeyError, action=RetryAction.FAIL)]),
        ]
    )
    assert chain.evaluate(KeyError("x"), 1, 3, None).action is RetryAction.FAIL
    assert chain.evaluate(Care360RateLimitError("429", retry_after=2), 1, 3, None).action is RetryAction.RETRY


@needs_policies
def test_serialize_round_trip() -> None:
    policy = Care360RetryPolicy(max_delay=120, jitter=0.2, backoff_base=5)
    copy = Care360RetryPolicy.deserialize(policy.serialize())
    assert (copy.max_delay, copy.jitter, copy.backoff_base) == (120, 0.2, 5)
    with pytest.raises(ValueError):
        Care360RetryPolicy(jitter=2)
