"""Hook for the Care360 API."""

from __future__ import annotations

import ipaddress
import logging
import re
import time
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta
from functools import cached_property
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

from airflow.providers.common.compat.sdk import BaseHook

from airflow_provider_care360 import __version__, version_compat  # noqa: F401 (the version guard)
from airflow_provider_care360._contract import APPOINTMENTS_PATH, AVAILABILITY_PATH, CANCEL_PATH
from airflow_provider_care360._responses import (
    AtInstant,
    lookup_unclear,
    parse_cancel_response,
    parse_instant,
    parse_lookup_response,
    parse_response,
    read_at_instant,
    safe_snippet,
)
from airflow_provider_care360.exceptions import (
    Care360AmbiguousError,
    Care360ConnectionConfigError,
    Care360Error,
    Care360LookupError,
    Care360NotSentError,
    Care360ValidationError,
)
from airflow_provider_care360.validation import build_booking_payload, build_lookup_query

if TYPE_CHECKING:
    import requests

__all__ = ["DEFAULT_TIMEOUT", "ENVIRONMENTS", "Care360Hook"]

#: Base URL of each Care360 environment.
ENVIRONMENTS: dict[str, str] = {
    "production": "https://api.care360-next.carevalidate.com",
    "staging": "https://api-staging.care360-next.carevalidate.com",
}
#: (connect, read) timeout in seconds for every request.
DEFAULT_TIMEOUT: tuple[float, float] = (10.0, 30.0)

MAX_BODY_BYTES = 1 << 20  # a booking answer is a few hundred bytes; more than this is not the API

Timeout = float | int | str | tuple[float, float] | list[float]


@dataclass(frozen=True)
class _Settings:
    """What the hook needs from its connection; the key is kept out of the repr."""

    base_url: str
    api_key: str = field(repr=False)
    timeout: tuple[float, float]


class _Overdue(Exception):
    """The answer was not read whole before the request's deadline."""


class _ApiKeyAuth:
    """Adds the ``cv-api-key`` header (a ``requests`` auth callable whose repr hides the key)."""

    def __init__(self, api_key: str) -> None:
        self._api_key = api_key

    def __call__(self, request: requests.PreparedRequest) -> requests.PreparedRequest:
        request.headers["cv-api-key"] = self._api_key
        return request

    def __repr__(self) -> str:
        return "_ApiKeyAuth(api_key='***')"


def _parse_timeout(value: object, where: str) -> tuple[float, float]:
    """``30``, ``"30"`` or ``[5, 30]`` -> ``(connect, read)`` seconds."""
    parts: list[object]
    if isinstance(value, (list, tuple)):
        parts = list(value)
    elif isinstance(value, str) and "," in value:
        parts = [p.strip() for p in value.split(",")]
    else:
        parts = [value, value]
    try:
        if len(parts) != 2 or any(isinstance(p, bool) for p in parts):
            raise ValueError
        connect, read = (float(p) for p in parts)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        raise Care360ConnectionConfigError(
            f"{where}: timeout {value!r} is not allowed; allowed: seconds as a number, or [connect, read]"
        ) from None
    if not (0 < connect <= 600 and 0 < read <= 600):
        raise Care360ConnectionConfigError(
            f"{where}: timeout {value!r} is not allowed; allowed: more than 0 and at most 600 seconds"
        )
    return connect, read


def _is_loopback(hostname: str) -> bool:
    if hostname.lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(hostname).is_loopback
    except ValueError:
        return False


def _failed_in_tls_handshake(exc: BaseException) -> bool:
    """
    Whether the ``ssl`` error behind ``exc`` was raised by the TLS handshake, before any request
    byte could be sent, rather than while writing the request or reading the answer. Told from where
    it was raised (``SSLSocket.do_handshake``), not from its reason, which is the same either way for
    some failures (a record that is not TLS reads as ``WRONG_VERSION_NUMBER`` in both).
    """
    import ssl

    seen: set[int] = set()
    stack: list[object] = [exc]
    while stack:
        err = stack.pop()
        if not isinstance(err, BaseException) or id(err) in seen:
            continue
        seen.add(id(err))
        if isinstance(err, ssl.SSLError):
            tb = err.__traceback__
            while tb is not None and tb.tb_next is not None:
                tb = tb.tb_next
            return tb is not None and tb.tb_frame.f_code.co_name == "do_handshake"
        stack.extend([getattr(err, "reason", None), err.__cause__, err.__context__, *err.args])
    return False


class _QueryRedactor(logging.Filter):
    """
    Hides query strings in urllib3's connection log: at DEBUG it logs every request line,
    ``GET /api/v1/calendar/appointments?user_email=jane.doe%40example.com``, which would put the
    invitee's address in the task log.
    """

    _QUERY = re.compile(r"\?[^\s\"']*")

    def filter(self, record: logging.LogRecord) -> bool:
        if record.args and any(isinstance(a, str) and "?" in a for a in _args(record)):
            record.msg = self._QUERY.sub("?***", record.getMessage())
            record.args = ()
        elif isinstance(record.msg, str) and "?" in record.msg:
            record.msg = self._QUERY.sub("?***", record.msg)
        return True


def _args(record: logging.LogRecord) -> tuple[Any, ...]:
    return record.args if isinstance(record.args, tuple) else (record.args,)


def _redact_urllib3_log() -> None:
    """Install :class:`_QueryRedactor` on urllib3's connection logger, once per process."""
    logger = logging.getLogger("urllib3.connectionpool")
    if not any(isinstance(f, _QueryRedactor) for f in logger.filters):
        logger.addFilter(_QueryRedactor())


def _user_agent() -> str:
    import requests

    try:
        from airflow import __version__ as airflow_version
    except ImportError:  # pragma: no cover - Airflow always has it
        airflow_version = "unknown"
    return (
        f"airflow-provider-care360/{__version__} apache-airflow/{airflow_version} "
        f"python-requests/{requests.__version__}"
    )


class Care360Hook(BaseHook):
    """
    Talks to the Care360 API with the API key of an Airflow connection.

    The connection (type ``care360``) holds the API key in its **password**. ``extra.environment``
    is ``production`` (default) or ``staging``; a non-empty **host** (a full URL such as
    ``http://127.0.0.1:8360``) overrides both, e.g. to point at the local simulator.
    ``extra.timeout`` sets the request timeout in seconds, one number or ``[connect, read]``.
    The key is only sent over ``https``, or plain ``http`` to a loopback host, unless
    ``extra.allow_insecure_http`` is ``true``.

    :param care360_conn_id: the Airflow connection to use.
    :param timeout: request timeout in seconds (one number or ``(connect, read)``); overrides the
        connection's ``extra.timeout``; default ``(10, 30)``.
    """

    conn_name_attr = "care360_conn_id"
    default_conn_name = "care360_default"
    conn_type = "care360"
    hook_name = "Care360"

    def __init__(
        self,
        care360_conn_id: str = default_conn_name,
        *,
        timeout: Timeout | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        self.care360_conn_id = care360_conn_id
        self._timeout_arg = timeout

    def __repr__(self) -> str:
        return f"{type(self).__name__}(care360_conn_id={self.care360_conn_id!r})"

    # The connection form on Airflow < 3.2 (3.2+ reads "conn-fields" from get_provider_info()).

    @classmethod
    def get_connection_form_widgets(cls) -> dict[str, Any]:
        """Extra fields of the ``care360`` connection form (Airflow < 3.2), from ``conn-fields``."""
        from flask_appbuilder.fieldwidgets import BS3TextFieldWidget
        from flask_babel import lazy_gettext
        from wtforms import BooleanField, StringField
        from wtforms.validators import AnyOf, Optional

        from airflow_provider_care360 import get_provider_info

        [conn_type] = get_provider_info()["connection-types"]
        fields = conn_type["conn-fields"]

        def text(name: str, **kwargs: Any) -> Any:
            field = fields[name]
            return StringField(
                lazy_gettext(field["label"]),
                widget=BS3TextFieldWidget(),
                description=field["description"] + kwargs.pop("hint", ""),
                **kwargs,
            )

        insecure = fields["allow_insecure_http"]
        return {
            # The legacy form has no dropdown: a text field that accepts the same values.
            "environment": text(
                "environment",
                validators=[Optional(), AnyOf(list(ENVIRONMENTS))],
                default=fields["environment"]["schema"]["default"],
                hint=f" One of: {', '.join(ENVIRONMENTS)}.",
            ),
            "timeout": text("timeout", validators=[Optional()], hint=" One number, or connect,read."),
            "allow_insecure_http": BooleanField(
                lazy_gettext(insecure["label"]), default=False, description=insecure["description"]
            ),
        }

    @classmethod
    def get_ui_field_behaviour(cls) -> dict[str, Any]:
        """Relabel and trim the connection form (Airflow < 3.2), as declared in get_provider_info()."""
        from airflow_provider_care360 import get_provider_info

        [conn_type] = get_provider_info()["connection-types"]
        declared = conn_type["ui-field-behaviour"]
        behaviour = {key.replace("-", "_"): value for key, value in declared.items()}
        if not version_compat.AIRFLOW_V_3_0_PLUS:
            # Airflow 2's form creates the editor its Test button saves only for an Extra field
            # shown when the page loads; hidden, Test fails in the browser ("Cannot convert undefined
            # or null to object") whenever the page opens on a Care360 connection: editing one, or
            # adding one where Care360 is the first type in the list.
            behaviour["hidden_fields"] = [name for name in behaviour["hidden_fields"] if name != "extra"]
        return behaviour

    # -- connection ---------------------------------------------------------------------------

    @cached_property
    def settings(self) -> _Settings:
        """Base URL, key and timeout, read from the connection once per hook."""
        where = f"Care360 connection {self.care360_conn_id!r}"
        conn = self.get_connection(self.care360_conn_id)
        raw = conn.extra_dejson if conn.extra else {}
        # Older connection forms stored their fields as "extra__care360__<name>".
        extra = {k.removeprefix("extra__care360__"): v for k, v in raw.items() if v not in (None, "")}

        api_key = (conn.password or "").strip()
        if not api_key:
            raise Care360ConnectionConfigError(f"{where} has no API key: set its password to the API key.")
        # An HTTP header value must be printable Latin-1 on one line; http.client would otherwise
        # raise an error that quotes the header, key and all.
        if not api_key.isprintable() or not all(ord(ch) < 256 for ch in api_key):
            raise Care360ConnectionConfigError(
                f"{where}: the API key contains a line break, a control character or a character "
                "outside Latin-1, which an HTTP header cannot carry; paste the key again as one line."
            )

        host = (conn.host or "").strip()
        if host:
            base_url = self._base_url_from_host(host, conn.schema, conn.port, where)
        else:
            environment = str(extra.get("environment") or "production").strip().lower()
            if environment not in ENVIRONMENTS:
                raise Care360ConnectionConfigError(
                    f"{where}: extra.environment {extra.get('environment')!r} is not allowed; allowed: "
                    f"{', '.join(ENVIRONMENTS)}, or set host to a base URL."
                )
            base_url = ENVIRONMENTS[environment]

        scheme_host = urlsplit(base_url)
        insecure_ok = str(extra.get("allow_insecure_http", "")).strip().lower() in ("true", "1", "yes")
        if scheme_host.scheme == "http" and not _is_loopback(scheme_host.hostname or "") and not insecure_ok:
            raise Care360ConnectionConfigError(
                f"{where}: refusing to send the API key over plain http to {scheme_host.hostname!r}. "
                "Use https, or set extra.allow_insecure_http to true if the network path is trusted."
            )

        if self._timeout_arg is not None:
            timeout = _parse_timeout(self._timeout_arg, f"Care360Hook({self.care360_conn_id!r})")
        elif extra.get("timeout") not in (None, ""):
            timeout = _parse_timeout(extra["timeout"], where)
        else:
            timeout = DEFAULT_TIMEOUT
        return _Settings(base_url=base_url, api_key=api_key, timeout=timeout)

    @staticmethod
    def _base_url_from_host(host: str, schema: str | None, port: int | None, where: str) -> str:
        if "://" not in host:
            host = f"{(schema or 'https').strip()}://{host}"
        bad = f"{where}: host {host!r} is not allowed; allowed: a base URL such as https://api.example.com"
        try:
            parts = urlsplit(host)
            parsed_port = parts.port
        except ValueError:
            raise Care360ConnectionConfigError(bad) from None
        if parts.scheme not in ("http", "https") or not parts.hostname or parts.query or parts.fragment:
            raise Care360ConnectionConfigError(bad)
        if "@" in parts.netloc:
            raise Care360ConnectionConfigError(f"{bad} (no credentials in the URL; the key is the password)")
        netloc = parts.netloc
        if port and parsed_port is None:
            netloc = f"{netloc}:{port}"
        return f"{parts.scheme}://{netloc}{parts.path.rstrip('/')}"

    @property
    def request_window(self) -> float:
        """The longest one request can stay unanswered on this side: connect plus read timeout."""
        connect, read = self.settings.timeout
        return connect + read

    def get_conn(self) -> requests.Session:
        """The hook's ``requests.Session`` (created once, reused for every request)."""
        return self._session

    @cached_property
    def _session(self) -> requests.Session:
        import requests
        from requests.adapters import HTTPAdapter

        _redact_urllib3_log()
        session = requests.Session()
        # No transport-level retries: a booking POST must never be re-sent behind our back.
        adapter = HTTPAdapter(max_retries=0)
        session.mount("https://", adapter)
        session.mount("http://", adapter)
        session.auth = _ApiKeyAuth(self.settings.api_key)
        session.headers.update({"User-Agent": _user_agent(), "Accept": "application/json"})
        return session

    def close(self) -> None:
        """Close the session's pooled connections (the hook can be used again afterwards)."""
        session = self.__dict__.pop("_session", None)
        if session is not None:
            session.close()

    # -- requests -----------------------------------------------------------------------------

    def _request(
        self, method: str, path: str, *, read_only: bool = False, **kwargs: Any
    ) -> tuple[int, dict[str, str], bytes]:
        """
        Send one request; map transport failures to typed errors.

        A failure before the request left is ``NotSent``; one after it may have reached Care360 is
        ``Ambiguous`` for a booking, and a retryable ``LookupError`` for a ``read_only`` request.
        """
        import requests

        settings = self.settings
        url = settings.base_url + path
        # requests' read timeout bounds each read, not the answer: a server trickling its body would
        # hold the try (and a journal's in-flight window) open. The whole answer gets one deadline.
        deadline = time.monotonic() + settings.timeout[0] + settings.timeout[1]
        try:
            response = self.get_conn().request(
                method, url, timeout=settings.timeout, allow_redirects=False, stream=True, **kwargs
            )
        except requests.exceptions.InvalidURL as exc:
            raise Care360ConnectionConfigError(
                f"Care360 connection {self.care360_conn_id!r}: {url!r} is not a valid URL ({exc})."
            ) from None
        except requests.exceptions.RequestException as exc:
            error = self._transport_error(exc, settings.base_url)
            if read_only and isinstance(error, Care360AmbiguousError):
                raise Care360LookupError(
                    f"The appointment lookup at {settings.base_url} failed ({type(exc).__name__}). "
                    "Nothing was booked; a lookup is safe to repeat, and Airflow will retry the task.",
                    summary=f"the appointment lookup failed ({type(exc).__name__})",
                ) from None
            raise error from None
        try:
            body = self._read_body(response.raw, deadline)
        except _Overdue:
            what = (
                f"Care360 at {settings.base_url} took longer than the connect and read timeouts "
                f"({sum(settings.timeout):g} s) to send its whole answer"
            )
            if read_only:
                raise Care360LookupError(
                    f"{what}. Nothing was booked; a lookup is safe to repeat, and Airflow will retry.",
                    summary=f"{what} (lookup)",
                ) from None
            raise Care360AmbiguousError(
                f"{what}. The booking may or may not exist: check the calendar for this invitee before "
                "running the task again.",
                summary=what,
            ) from None
        except Exception as exc:  # a reset or a broken chunk while reading the answer
            if read_only:
                raise Care360LookupError(
                    f"The connection to Care360 at {settings.base_url} broke while reading the "
                    f"lookup's answer ({type(exc).__name__}). Nothing was booked; Airflow will retry.",
                    summary=f"the connection broke while reading the lookup's answer ({type(exc).__name__})",
                ) from None
            raise Care360AmbiguousError(
                f"The connection to Care360 at {settings.base_url} broke while reading its answer "
                f"({type(exc).__name__}). The booking may or may not exist: check the calendar for "
                "this invitee before running the task again.",
                summary=f"the connection broke while reading Care360's answer ({type(exc).__name__})",
            ) from None
        finally:
            response.close()
        if len(body) > MAX_BODY_BYTES:
            body = b""  # far larger than any API answer: treat it as unreadable
        return response.status_code, dict(response.headers), body

    @staticmethod
    def _read_body(raw: Any, deadline: float) -> bytes:
        """The answer's body, up to one byte past ``MAX_BODY_BYTES``; ``_Overdue`` past ``deadline``."""
        read = getattr(raw, "read1", None)  # urllib3 >= 2: what one socket read gives, never more
        chunks: list[bytes] = []
        size = 0
        while size <= MAX_BODY_BYTES:
            if time.monotonic() > deadline:
                raise _Overdue
            chunk = (
                read(65536, decode_content=True) if read is not None else raw.read(4096, decode_content=True)
            )
            if not chunk:
                break
            chunks.append(chunk)
            size += len(chunk)
        return b"".join(chunks)

    @staticmethod
    def _transport_error(exc: Exception, base_url: str) -> Care360Error:
        import requests
        from urllib3.exceptions import ConnectTimeoutError, NewConnectionError

        reason = exc.args[0] if exc.args else None
        reason = getattr(reason, "reason", reason)
        what = type(reason if isinstance(reason, Exception) else exc).__name__
        # Only a failure that provably happened before the request left is "not sent": no
        # connection, a connect timeout, or a TLS error raised by the handshake itself.
        if (
            isinstance(exc, requests.exceptions.ConnectTimeout)
            or isinstance(reason, (NewConnectionError, ConnectTimeoutError))
            or (isinstance(exc, requests.exceptions.SSLError) and _failed_in_tls_handshake(exc))
        ):
            return Care360NotSentError(
                f"Could not reach Care360 at {base_url} ({what}): the request was not sent, nothing "
                "was booked. Airflow will retry the task.",
                summary=f"could not reach Care360 ({what}): the request was not sent",
            )
        if isinstance(exc, requests.exceptions.ReadTimeout):
            return Care360AmbiguousError(
                f"Care360 at {base_url} did not answer in time (read timeout). The request was sent, "
                "so the booking may or may not exist: check the calendar for this invitee before "
                "running the task again.",
                summary="Care360 did not answer in time (read timeout)",
            )
        return Care360AmbiguousError(
            f"The connection to Care360 at {base_url} failed after the request was sent ({what}). "
            "The booking may or may not exist: check the calendar for this invitee before running "
            "the task again.",
            summary=f"the connection to Care360 failed after the request was sent ({what})",
        )

    def schedule_appointment(
        self,
        *,
        event_type_id: str,
        start_time: str | datetime,
        email: str,
        timezone: str,
        location: str,
        first_name: str | None = None,
        last_name: str | None = None,
        tracking: dict[str, str | None] | None = None,
    ) -> dict[str, Any]:
        """
        Book one appointment (``POST /api/v1/calendar/appointments``).

        Every field is validated first; a bad field raises ``Care360ValidationError`` and nothing
        is sent. ``start_time`` may be an ISO 8601 string or a ``datetime``: an aware value is sent
        as UTC (``YYYY-MM-DDTHH:MM:SSZ``); a naive value is read in the invitee's ``timezone``.
        ``tracking`` takes the API's camelCase keys or their snake_case twins. Optional fields left
        as ``None`` are left out of the body.

        :return: the API's JSON body, as a dict.
        :raises Care360Error: a subclass per outcome; see :mod:`airflow_provider_care360.exceptions`.
        """
        payload = build_booking_payload(
            event_type_id=event_type_id,
            start_time=start_time,
            email=email,
            timezone=timezone,
            location=location,
            first_name=first_name,
            last_name=last_name,
            tracking=tracking,
        )
        return self.send_booking(payload)

    def send_booking(self, payload: dict[str, Any]) -> dict[str, Any]:
        """POST an already validated body (from ``build_booking_payload``) and parse the answer."""
        status, headers, body = self._request("POST", APPOINTMENTS_PATH, json=payload)
        self.log.debug("Care360 answered %s to the booking request", status)
        personal = [str(payload[k]) for k in ("email", "firstName", "lastName") if payload.get(k)]
        personal += [v for v in (payload.get("tracking") or {}).values() if isinstance(v, str) and len(v) > 2]
        return parse_response(
            status,
            headers,
            body,
            conn_id=self.care360_conn_id,
            secret=self.settings.api_key,
            personal=personal,
        )

    def find_appointments(
        self,
        *,
        user_email: str | None = None,
        start_date: str | date | None = None,
        end_date: str | date | None = None,
    ) -> list[dict[str, Any]]:
        """
        Fetch appointments (``GET /api/v1/calendar/appointments``).

        Filter by the invitee's ``user_email`` (matched case-insensitively by Care360), by a range of
        days (``start_date`` and ``end_date``, both or neither, ``YYYY-MM-DD`` or ``date``), or both.
        The query is checked before anything is sent. Care360 returns only appointments that are
        not deleted and have not ended, sorted by end time; an email it does not know is answered
        with its "not found" error (``NotFoundError``), returned here as an empty list.

        :return: the appointments, as the API's plain dicts (``id``, ``start``, ``end``, ``status``, ...).
        :raises Care360ValidationError: a bad query (nothing sent).
        :raises Care360LookupError: a 5xx, 408, 425, timeout or reset: safe to retry.
        :raises Care360RateLimitError: a 429.
        :raises Care360LookupUnusableError: a 403, no such endpoint, or an answer of another shape.
        :raises Care360LookupAmbiguousError: an answer that looks like one page of several.
        """
        query = build_lookup_query(user_email=user_email, start_date=start_date, end_date=end_date)
        status, headers, body = self._request("GET", APPOINTMENTS_PATH, read_only=True, params=query)
        self.log.debug("Care360 answered %s to the appointment lookup", status)
        return parse_lookup_response(
            status,
            headers,
            body,
            conn_id=self.care360_conn_id,
            by_email="user_email" in query,
            secret=self.settings.api_key,
            personal=[query["user_email"]] if "user_email" in query else [],
        )

    def appointments_at(self, *, email: str, start_time: str | datetime) -> AtInstant:
        """
        What Care360 holds for the invitee at the instant ``start_time``: its active appointments
        there (oldest first), statuses it cannot read, and starts it cannot parse.

        One lookup, narrowed to the days around the start (``user_email`` with ``start_date`` and
        ``end_date``: the day before to the day after, in UTC, since the contract does not say in
        which zone it reads those dates), so an invitee with many future appointments is not read
        from one long answer. ``start_time`` must be aware (an offset or ``Z``).
        """
        start = parse_instant(start_time)
        if start is None:
            raise Care360ValidationError(
                [f"start_time: {start_time!r} is not allowed; allowed: an ISO 8601 date-time with an offset"]
            )
        day = start.astimezone(UTC).date()
        found = self.find_appointments(
            user_email=email, start_date=day - timedelta(days=1), end_date=day + timedelta(days=1)
        )
        return read_at_instant(found, start)

    def find_appointment_at(self, *, email: str, start_time: str | datetime) -> dict[str, Any] | None:
        """
        The invitee's appointment that exists at the instant ``start_time``, or ``None``.

        Compares instants, not strings: ``2026-12-01T15:00:00Z``, ``...T15:00:00.000Z`` and
        ``...T16:00:00+01:00`` are the same start. Counts ``CONFIRMED`` appointments; ignores
        cancelled-like ones (a status starting ``CANCEL``, ``DELETED``, ``isDeleted: true``).

        :raises Care360LookupAmbiguousError: nothing active at the instant, and an appointment there
            with a status the provider does not know, or one whose start cannot be read.
        """
        reading = self.appointments_at(email=email, start_time=start_time)
        if not reading.clear:
            raise lookup_unclear(reading)
        return reading.found

    def cancel_appointment(
        self, *, email: str, appointment_id: str, reason: str | None = None
    ) -> dict[str, Any]:
        """
        Cancel an appointment (``POST /api/v1/calendar/appointments/cancel``). Visible to the invitee:
        Calendly notifies them. The provider cancels only a second appointment it booked itself.

        :return: the API's JSON body.
        :raises Care360Error: as for a booking (400 when no such active appointment exists).
        """
        body: dict[str, Any] = {"email": email, "appointmentId": appointment_id}
        if reason:
            body["reason"] = reason
        status, headers, raw = self._request("POST", CANCEL_PATH, json=body)
        self.log.debug("Care360 answered %s to the cancel request", status)
        return parse_cancel_response(
            status, headers, raw, conn_id=self.care360_conn_id, secret=self.settings.api_key, personal=[email]
        )

    def test_connection(self) -> tuple[bool, str]:
        """
        Check the connection without booking anything.

        Sends ``GET /api/v1/calendar/provider-availability`` with no query: a safe, read-only
        request. Care360 checks the key before the query, so 401 means the key was rejected, while
        any answer past authentication (200, or 400 for the missing ``provider_states``) means it
        was accepted.
        """
        try:
            status, _, body = self._request("GET", AVAILABILITY_PATH)
        except Care360Error as exc:
            return False, str(exc)
        except Exception as exc:  # never let an unexpected error (and what it quotes) reach the UI
            return False, f"Testing connection {self.care360_conn_id!r} failed ({type(exc).__name__})."
        base = self.settings.base_url
        if status == 401:
            # No connection id here: the UI's Test runs under a throwaway one.
            return False, f"Care360 at {base} rejected the API key (401): check the connection's API Key."
        if status == 429:
            return False, f"Care360 at {base} is rate limiting this key (429); try again shortly."
        if 200 <= status < 300 or status in (400, 422):
            return True, f"Connected to Care360 at {base}; the API key was accepted."
        return False, f"Care360 at {base} answered {status}: {safe_snippet(body, self.settings.api_key)!r}"
