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

    for failed in (Care360AuthError, Care360AmbiguousError):
        assert issubclass(failed, AirflowFailException) and not failed.retryable
    for retried in (Care360RateLimitError, Care360NotSentError, Care360AmbiguousRetryableError):
        assert not issubclass(retried, AirflowFailException) and retried.retryable
    # One rule: the fail-at-once ambiguous error is not a kind of the retryable one.
    assert not issubclass(Care360AmbiguousError, Care360AmbiguousRetryableError)


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
def test_a_named_wait_beyond_the_cap_fails_now_instead_of_burning_retries() -> None:
    from airflow.providers.common.compat.sdk import RetryAction

    decision = _decide(Care360RateLimitError("429", retry_after=9 * 3600), max_delay=600)
    assert decision.action is RetryAction.FAIL
    assert "32400 s" in decision.reason and "safe to run again" in decision.reason
    # The task's own max_retry_delay caps too, when it is the smaller.
    context = {
        "task": SimpleNamespace(retry_delay=timedelta(seconds=1), max_retry_delay=timedelta(seconds=60))
    }
    policy = Care360RetryPolicy(max_delay=3600)
    assert (
        policy.evaluate(Care360RateLimitError("429", retry_after=120), 1, 5, context).action
        is RetryAction.FAIL
    )
    assert (
        policy.evaluate(Care360RateLimitError("429", retry_after=30), 1, 5, context).action
        is RetryAction.RETRY
    )


@needs_policies
def test_jitter_never_takes_a_wait_past_the_cap() -> None:
    for _ in range(200):
        decision = _decide(Care360RateLimitError("429", retry_after=590), max_delay=600, jitter=1.0)
        assert 590 <= decision.retry_delay.total_seconds() <= 600


@needs_policies
def test_no_cap_means_no_cap_and_a_zero_retry_delay_is_honoured() -> None:
    long_wait = _decide(Care360RateLimitError("429", retry_after=7200), max_delay=None, jitter=0)
    assert long_wait.retry_delay == timedelta(seconds=7200)
    backoff = _decide(Care360RateLimitError("429"), try_number=12, max_delay=None, jitter=0)
    assert backoff.retry_delay == timedelta(seconds=10 * 2**11)
    # retry_delay=0: the task's own choice, not a fallback of 30 s (a 1 s floor keeps it off the API).
    immediate = _decide(Care360RateLimitError("429"), retry_delay=0, jitter=0)
    assert immediate.retry_delay == timedelta(seconds=1)


@pytest.mark.parametrize("bad", [{"max_delay": -5}, {"max_delay": 0}, {"backoff_base": -1}, {"jitter": 2}])
def test_nonsense_settings_are_refused(bad: dict[str, float]) -> None:
    with pytest.raises(ValueError):
        Care360RetryPolicy(**bad)  # type: ignore[arg-type]


@needs_policies
def test_a_non_retryable_error_wrapped_by_user_code_still_fails_at_once() -> None:
    from airflow.providers.common.compat.sdk import RetryAction

    for inner in (Care360AmbiguousError("502"), Care360AuthError("401")):
        try:
            try:
                raise inner
            except Exception as exc:
                raise RuntimeError("my @task wraps it") from exc
        except RuntimeError as outer:
            assert _decide(outer).action is RetryAction.FAIL


@needs_policies
def test_backoff_doubles_from_the_task_retry_delay_and_is_capped() -> None:
    waits = [
        _decide(Care360RateLimitError("429"), try_number=n, jitter=0).retry_delay.total_seconds()
        for n in range(1, 9)
    ]
    assert waits == [10, 20, 40, 80, 160, 320, 640, 1280]  # the default cap is 1 hour
    capped = [
        _decide(
            Care360RateLimitError("429"), try_number=n, jitter=0, max_delay=900
        ).retry_delay.total_seconds()
        for n in (7, 8)
    ]
    assert capped == [640, 900]
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
