"""DAGs the test suite runs with ``dag.test()``; each takes its booking data from params or conf."""

from __future__ import annotations

import warnings
from datetime import datetime, timedelta
from typing import Any

from airflow.providers.common.compat.sdk import DAG, task

from airflow_provider_care360.operators.care360 import ScheduleAppointmentOperator

START = datetime(2025, 1, 1)
#: Seconds after an unclear answer during which the simulator's late bookings land (tests use < 2 s).
APPLY_WINDOW = 3.0
FAST_RETRIES: dict[str, Any] = {
    "retries": 2,
    "retry_delay": timedelta(seconds=1),
    "email_on_failure": False,
    "email_on_retry": False,
}
BOOKING_PARAMS: dict[str, Any] = {
    "event_type_id": "85f13305-0647-4473-9e63-0a56af405f6f",
    "start_time": "",
    "email": "jane.doe@example.com",
    "timezone": "America/New_York",
    "location": "zoom_conference",
    "first_name": "Jane",
    "last_name": "Doe",
    "utm_source": "warehouse",
    "conn_id": "care360_default",
}


def _params_operator(**extra: Any) -> ScheduleAppointmentOperator:
    fields: dict[str, Any] = {
        "event_type_id": "{{ params.event_type_id }}",
        "start_time": "{{ params.start_time }}",
        "invitee_email": "{{ params.email }}",
        "timezone": "{{ params.timezone }}",
        "location": "{{ params.location }}",
        "first_name": "{{ params.first_name }}",
        "care360_conn_id": "{{ params.conn_id }}",
        "settle_delay": 0.2,
        "apply_window": APPLY_WINDOW,
    }
    return ScheduleAppointmentOperator(task_id="book", **{**fields, **extra})


# 1. Every field templated from params.
with DAG(
    "care360_t_params",
    schedule=None,
    start_date=START,
    catchup=False,
    params=BOOKING_PARAMS,
    default_args=FAST_RETRIES,
):
    _params_operator(
        last_name="{{ params.last_name }}",
        tracking={"utm_source": "{{ params.utm_source }}", "salesforceUuid": "{{ run_id }}"},
    )


@task
def find_patient_dict(**context: Any) -> dict[str, Any]:
    return dict(context["dag_run"].conf["patient"])


@task(multiple_outputs=True)
def find_patient(**context: Any) -> dict[str, Any]:
    return dict(context["dag_run"].conf["patient"])


# 2. Fields pulled from an upstream task's XCom with Jinja.
with DAG("care360_t_xcom_pull", schedule=None, start_date=START, catchup=False, default_args=FAST_RETRIES):
    book = ScheduleAppointmentOperator(
        task_id="book",
        event_type_id="{{ ti.xcom_pull(task_ids='find_patient_dict')['event_type_id'] }}",
        start_time="{{ ti.xcom_pull(task_ids='find_patient_dict')['start_time'] }}",
        invitee_email="{{ ti.xcom_pull(task_ids='find_patient_dict')['email'] }}",
        timezone="{{ ti.xcom_pull(task_ids='find_patient_dict')['timezone'] }}",
        location="{{ ti.xcom_pull(task_ids='find_patient_dict')['location'] }}",
    )
    find_patient_dict() >> book

# 3. Fields passed as XComArgs of a multiple_outputs task.
with DAG("care360_t_xcomarg", schedule=None, start_date=START, catchup=False, default_args=FAST_RETRIES):
    patient = find_patient()
    ScheduleAppointmentOperator(
        task_id="book",
        event_type_id=patient["event_type_id"],
        start_time=patient["start_time"],
        invitee_email=patient["email"],
        timezone=patient["timezone"],
        location=patient["location"],
        first_name=patient["first_name"],
    )

# 4. Native rendering: tracking renders to a dict and start_time to a datetime.
with DAG(
    "care360_t_native",
    schedule=None,
    start_date=START,
    catchup=False,
    render_template_as_native_obj=True,
    params={**BOOKING_PARAMS, "tracking": {"utmCampaign": "spring", "utm_medium": None}},
    default_args=FAST_RETRIES,
):
    ScheduleAppointmentOperator(
        task_id="book",
        event_type_id="{{ params.event_type_id }}",
        start_time="{{ macros.datetime.fromisoformat(params.start_time) }}",
        invitee_email="{{ params.email }}",
        timezone="{{ params.timezone }}",
        location="{{ params.location }}",
        tracking="{{ params.tracking }}",
    )


@task
def list_invitees(**context: Any) -> list[dict[str, Any]]:
    return list(context["dag_run"].conf["invitees"])


# 5. A mapped batch: one task instance per booking.
with DAG("care360_t_batch", schedule=None, start_date=START, catchup=False, default_args=FAST_RETRIES):
    # Enough retries for the rate-limit tests on Airflow < 3.3, where each retry waits 1 s.
    ScheduleAppointmentOperator.partial(task_id="book", retries=12).expand_kwargs(list_invitees())

# 6. Alerts go to BaseOperator's ``email``; the invitee is ``invitee_email``. Airflow 3.3 deprecates
# a task's ``email`` (for SmtpNotifier), but users still set it, and it must never be booked: the
# deprecation is expected here, and only here.
with warnings.catch_warnings():
    warnings.filterwarnings("ignore", "Setting email(_on_retry|_on_failure)? on a task", DeprecationWarning)
    with DAG(
        "care360_t_alerting",
        schedule=None,
        start_date=START,
        catchup=False,
        params=BOOKING_PARAMS,
        default_args={"email": ["oncall@example.org"], "email_on_failure": True, "email_on_retry": False},
    ):
        _params_operator()


# 7. No lookup, and the caller accepts the double-booking risk of retrying an ambiguous outcome.
with DAG(
    "care360_t_ambiguous_retry",
    schedule=None,
    start_date=START,
    catchup=False,
    params=BOOKING_PARAMS,
    default_args=FAST_RETRIES,
):
    _params_operator(check_existing=False, retry_on_ambiguous=True)

# 7b. No lookup: one booking request per try, as before the lookup existed.
with DAG(
    "care360_t_no_check",
    schedule=None,
    start_date=START,
    catchup=False,
    params=BOOKING_PARAMS,
    default_args=FAST_RETRIES,
):
    _params_operator(check_existing=False)


# 7c'. No lookup, and a try that books and then fails before Airflow records its success (as a
# worker killed right after Care360's answer): the next try must replay the booking, not send it.
# ``start_time_retry`` gives the later tries other fields, as a template reading the clock would.
def _fail_the_first_try(context: Any, result: Any = None) -> None:
    if context["ti"].try_number == 1:
        raise RuntimeError("the worker was lost after Care360 answered")


with DAG(
    "care360_t_no_check_lost_success",
    schedule=None,
    start_date=START,
    catchup=False,
    params={**BOOKING_PARAMS, "start_time_retry": ""},
    default_args=FAST_RETRIES,
):
    _params_operator(
        check_existing=False,
        start_time="{{ params.start_time_retry if ti.try_number > 1 and params.start_time_retry "
        "else params.start_time }}",
        post_execute=_fail_the_first_try,
    )

# 7c. Airflow's default: no retries at all.
with DAG(
    "care360_t_no_retries",
    schedule=None,
    start_date=START,
    catchup=False,
    params=BOOKING_PARAMS,
    default_args={"email_on_failure": False, "email_on_retry": False},
):
    _params_operator()

# 8. A retry policy of the user's own replaces the provider's (Airflow >= 3.3 only).
try:
    from airflow.providers.common.compat.sdk import ExceptionRetryPolicy, RetryAction, RetryRule
except ImportError:  # Airflow < 3.3
    pass
else:
    with DAG(
        "care360_t_user_policy",
        schedule=None,
        start_date=START,
        catchup=False,
        params=BOOKING_PARAMS,
        default_args=FAST_RETRIES,
    ):
        _params_operator(
            retry_policy=ExceptionRetryPolicy(
                rules=[
                    RetryRule(
                        exception="airflow_provider_care360.exceptions.Care360RateLimitError",
                        action=RetryAction.FAIL,
                        reason="this team fails on throttling",
                    )
                ]
            )
        )

# 8b. retry_policy from default_args, and retry_policy=None, for plain and mapped tasks (3.3 only).
try:
    from airflow.providers.common.compat.sdk import ExceptionRetryPolicy, RetryAction, RetryRule
except ImportError:  # Airflow < 3.3
    pass
else:
    FAIL_ON_429 = ExceptionRetryPolicy(
        rules=[
            RetryRule(
                exception="airflow_provider_care360.exceptions.Care360RateLimitError",
                action=RetryAction.FAIL,
                reason="this team fails on throttling",
            )
        ]
    )
    with DAG(
        "care360_t_default_args_policy",
        schedule=None,
        start_date=START,
        catchup=False,
        params=BOOKING_PARAMS,
        default_args={**FAST_RETRIES, "retry_policy": FAIL_ON_429},
    ):
        _params_operator()
        ScheduleAppointmentOperator.partial(task_id="book_mapped", settle_delay=0.2).expand_kwargs(
            list_invitees()
        )
    with DAG(
        "care360_t_policy_off",
        schedule=None,
        start_date=START,
        catchup=False,
        params=BOOKING_PARAMS,
        default_args=FAST_RETRIES,
    ):
        _params_operator(retry_policy=None)
        ScheduleAppointmentOperator.partial(
            task_id="book_mapped", retry_policy=None, settle_delay=0.2
        ).expand_kwargs(list_invitees())

# 9. A large mapped batch with room for the retries a rate limit forces: on Airflow < 3.3 each
# retry waits the 1 s retry_delay, so a task may meet a 429 once a second for the whole batch.
with DAG("care360_t_big_batch", schedule=None, start_date=START, catchup=False, default_args=FAST_RETRIES):
    ScheduleAppointmentOperator.partial(task_id="book", retries=40).expand_kwargs(list_invitees())


# 10. execution_timeout fires while the try waits to settle an unclear answer.
with DAG(
    "care360_t_timeout",
    schedule=None,
    start_date=START,
    catchup=False,
    params=BOOKING_PARAMS,
    default_args=FAST_RETRIES,
):
    _params_operator(settle_delay=6.0, execution_timeout=timedelta(seconds=2))


# 11. No retry policy (on every Airflow): the retry comes after the task's own retry_delay.
with DAG(
    "care360_t_no_policy",
    schedule=None,
    start_date=START,
    catchup=False,
    params=BOOKING_PARAMS,
    default_args=FAST_RETRIES,
):
    _params_operator(retry_policy=None)
