"""
A local Care360 API simulator: a real HTTP server on loopback that implements the documented contract.

Use it to test DAGs that book appointments without touching the real Care360 hosts::

    from airflow_provider_care360.testing import Care360Simulator

    with Care360Simulator(api_key="test-key") as sim:
        os.environ.update(sim.airflow_connection_env())   # AIRFLOW_CONN_CARE360_DEFAULT
        dag.test()
        assert len(sim.bookings) == 1

or from a shell: ``python -m airflow_provider_care360.testing --port 8360 --api-key test-key``
(also installed as ``care360-simulator``).

What it implements (sections 1 and 2a of the contract):

* ``POST /api/v1/calendar/appointments``: 401 for a missing or wrong ``cv-api-key``; 429 past the
  configured rate limit (with ``Retry-After`` and, optionally, ``X-RateLimit-*`` headers) or past the
  longer ``quota`` (with only ``X-RateLimit-Limit/-Remaining/-Reset``, as Calendly); 400 with
  the documented body for an invalid body or a start time that is not a bookable slot (in the
  future, on a ``slot_minutes`` boundary, not already taken for that event type); 200 otherwise,
  recording the booking in the ledger.
* ``GET /api/v1/calendar/appointments`` (Fetch Appointments): 401; 429 past its own rate limit;
  400 for a query without ``user_email`` or with a bad date range; the documented "not found" 404
  for an email it has never seen; otherwise 200 with the appointments of the ledger (and those
  pre-loaded with :meth:`Care360Simulator.add_appointment`) that match, are not cancelled and have
  not ended, sorted by end time, ``start`` and ``end`` written with milliseconds (``...:00.000Z``),
  ``createdAt`` the instant the appointment entered the ledger (milliseconds, strictly increasing), a
  booking only ``lookup_lag`` seconds after it did.
* ``POST /api/v1/calendar/appointments/cancel`` (section 2b): 401; 429; 400 for a body without
  ``email`` and ``appointmentId`` or one that names no active appointment of that email; 200, and the
  appointment leaves lookups and frees its slot.
* ``GET /api/v1/calendar/provider-availability`` (also at ``/api/v1/provider-availability``): 401;
  429; 400 (``provider_states`` missing, or ``start_time``/``end_time`` without ``event_type_id``);
  200 with an empty ``data`` list.

Every API request waits ``latency`` seconds (``booking_latency``, ``lookup_latency``) before it is
answered, on its own connection's thread: other connections keep being served meanwhile.

Every request gets a JSON answer in the documented envelope, whatever its framing: 400 for framing
it cannot read, 413 for a body over ``MAX_REQUEST_BYTES`` (chunked bodies are read too), 405 with
``Allow`` for any other method on a known path, a JSON 404 elsewhere. A body it refuses is not read
into memory: the answer goes out with ``Connection: close`` and the rest of the body is read and
dropped (for at most ``DRAIN_SECONDS`` and ``DRAIN_MAX_BYTES``) before the connection is closed, so
a client still sending it reads the answer instead of a broken pipe.

Admin endpoints (no API key): ``GET /_simulator/bookings``, ``GET /_simulator/requests``,
``GET /_simulator/health``, ``POST /_simulator/reset``, ``POST /_simulator/faults`` (a fault object or
a list of them, see :class:`Fault`), ``POST /_simulator/appointments`` (``email``, ``start`` and,
optionally, ``event_type_id``, ``duration_minutes``, ``status``, ``isDeleted``: pre-load one). They
answer loopback clients only, or, when an admin token is configured, any client sending it in
``X-Simulator-Admin-Token`` and nobody else. Recorded requests never keep the ``cv-api-key`` value.
"""

from __future__ import annotations

import functools
import hmac
import ipaddress
import json
import re
import socket
import struct
import threading
import time
import uuid
from dataclasses import asdict
from datetime import UTC, datetime, timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, urlsplit
from zoneinfo import ZoneInfo

from airflow_provider_care360._contract import APPOINTMENTS_PATH as APPOINTMENTS
from airflow_provider_care360._contract import AVAILABILITY_PATH as AVAILABILITY
from airflow_provider_care360.testing.faults import Fault, FaultQueue
from airflow_provider_care360.testing.ratelimit import RateLimiter, Tier
from airflow_provider_care360.testing.rules import (
    DOCUMENTED,
    availability_answer,
    booking_problem,
    cancel_problem,
    check_options,
    check_seconds,
    envelope,
    lookup_answer,
    timestamp,
    utc,
)

__all__ = [
    "ADMIN",
    "ADMIN_TOKEN_HEADER",
    "DRAIN_MAX_BYTES",
    "DRAIN_SECONDS",
    "MAX_REQUEST_BYTES",
    "OPENAPI_PATH",
    "Care360Simulator",
    "openapi_document",
]

#: Where the simulator serves the OpenAPI document of the contract (no key needed).
OPENAPI_PATH = "/openapi.json"


def openapi_document() -> dict[str, Any]:
    """The OpenAPI document of the Care360 contract as the project reads it, shipped in the package."""
    from importlib.resources import files

    return dict(
        json.loads(files("airflow_provider_care360.testing").joinpath("care360-openapi.json").read_text())
    )


ADMIN = "/_simulator"
#: The header that carries the admin token, when one is configured.
ADMIN_TOKEN_HEADER = "X-Simulator-Admin-Token"
CANCEL = APPOINTMENTS + "/cancel"
#: One copy of the vendor's docs gives the availability endpoint this path; the simulator serves both.
AVAILABILITY_ALIAS = "/api/v1/provider-availability"
MAX_REQUEST_BYTES = 1 << 20
#: After refusing a body (413, bad framing), read and drop at most this many more bytes of it ...
DRAIN_MAX_BYTES = 64 << 20
#: ... for at most this many seconds (and one second without data), then close the connection.
DRAIN_SECONDS = 5.0
_DRAIN_IDLE_SECONDS = 1.0


class Care360Simulator:
    """
    The simulator. Start it with ``start()`` (or as a context manager) and stop it with ``stop()``.

    :param api_key: the only key accepted in ``cv-api-key``.
    :param host: address to listen on; keep it on loopback.
    :param port: port to listen on; 0 picks a free one (see :attr:`url`).
    :param rate_limit: booking requests allowed per ``rate_window`` seconds; ``None`` for no limit.
    :param rate_window: length of the fixed rate-limit window, in seconds.
    :param send_retry_after: send ``Retry-After`` (seconds until the window ends) with a 429.
    :param rate_limit_headers: send ``X-RateLimit-Limit/-Remaining/-Reset`` with each booking answer.
    :param slot_minutes: start times must fall on a multiple of this many minutes past the hour.
    :param event_types: the event type ids that exist; ``None`` accepts any non-empty id.
    :param one_on_one: a slot of an event type can be booked once; a second booking is a 400.
    :param lookup_rate_limit: lookups allowed per ``lookup_rate_window`` seconds (Care360 documents
        500 per 60 s); ``None`` for no limit.
    :param lookup_rate_window: length of the lookup's rate-limit window, in seconds.
    :param host_timezone: the zone whose wall clock slots are aligned on (``slot_minutes`` past its
        midnight), whatever offset a client writes its start time in. Default UTC.
    :param admin_token: when set, the ``/_simulator`` admin endpoints answer any client that sends it
        in ``X-Simulator-Admin-Token``, and nobody else; when not, they answer loopback clients only.
    :param quota: a second, longer tier of the booking limit: bookings allowed per ``quota_window``
        seconds (as Calendly's 100 invitees a day: ``quota=100, quota_window=86400``); ``None`` for
        none. Past it a booking is a 429 with only ``X-RateLimit-Limit``, ``X-RateLimit-Remaining``
        (0) and ``X-RateLimit-Reset`` (seconds until the quota window ends), never ``Retry-After``.
        A booking refused by either tier (``rate_limit`` or ``quota``) counts against neither; when
        both refuse, the quota answers (its wait is the one that matters).
    :param quota_window: length of the quota's fixed window, in seconds (default a day).
    :param lookup_lag: seconds after a booking enters the ledger before Fetch Appointments shows it
        (until then the lookup answers as if it were not there: a 404 for an invitee with nothing
        else); it takes its slot at once. Pre-loaded appointments show at once. Default 0.
    :param latency: seconds every API request (booking, lookup, cancel, availability; not the admin
        endpoints) waits before it is answered. The request takes effect when it arrives; only its
        answer is late. Each connection has its own thread, so other requests are served meanwhile.
    :param booking_latency: the booking's latency instead of ``latency``; ``None`` to use ``latency``.
    :param lookup_latency: the lookup's latency instead of ``latency``; ``None`` to use ``latency``.

    The cancel endpoint shares the booking's rate-limit numbers (not its quota) and availability the
    lookup's, each with its own window. Every one of these settings is also an attribute of the same
    name that a test can change while the simulator runs.
    """

    def __init__(
        self,
        api_key: str,
        *,
        host: str = "127.0.0.1",
        port: int = 0,
        rate_limit: int | None = None,
        rate_window: float = 60.0,
        send_retry_after: bool = True,
        rate_limit_headers: bool = False,
        slot_minutes: int = 30,
        event_types: set[str] | None = None,
        one_on_one: bool = True,
        lookup_rate_limit: int | None = None,
        lookup_rate_window: float = 60.0,
        host_timezone: str = "UTC",
        admin_token: str | None = None,
        quota: int | None = None,
        quota_window: float = 86400.0,
        lookup_lag: float = 0.0,
        latency: float = 0.0,
        booking_latency: float | None = None,
        lookup_latency: float | None = None,
    ) -> None:
        if not api_key:
            raise ValueError("api_key must not be empty")
        check_options(
            slot_minutes=slot_minutes,
            rate_limit=rate_limit,
            rate_window=rate_window,
            lookup_rate_limit=lookup_rate_limit,
            lookup_rate_window=lookup_rate_window,
            quota=quota,
            quota_window=quota_window,
        )
        check_seconds("lookup_lag", lookup_lag)
        check_seconds("latency", latency)
        check_seconds("booking_latency", booking_latency, optional=True)
        check_seconds("lookup_latency", lookup_latency, optional=True)
        try:
            self._zone = ZoneInfo(host_timezone)
        except Exception:
            raise ValueError(f"host_timezone must be an IANA time zone, got {host_timezone!r}") from None
        self.host_timezone = host_timezone
        self.admin_token = admin_token or None
        self.api_key = api_key
        self.host = host
        self.port = port
        self.rate_limit = rate_limit
        self.rate_window = rate_window
        self.send_retry_after = send_retry_after
        self.rate_limit_headers = rate_limit_headers
        self.slot_minutes = slot_minutes
        self.event_types = event_types
        self.one_on_one = one_on_one
        self.lookup_rate_limit = lookup_rate_limit
        self.lookup_rate_window = lookup_rate_window
        self.quota = quota
        self.quota_window = quota_window
        self.lookup_lag = lookup_lag
        self.latency = latency
        self.booking_latency = booking_latency
        self.lookup_latency = lookup_latency
        self._lock = threading.Lock()
        # Notified when a late application (Fault.apply_after) is done; shares the ledger's lock.
        self._settled = threading.Condition(self._lock)
        # Every appointment: booked through the API ("source": "api") or pre-loaded ("preloaded").
        self._bookings: list[dict[str, Any]] = []
        self._taken: set[tuple[str, str]] = set()
        # When (time.monotonic()) each booking entered the ledger, for lookup_lag.
        self._entered: dict[str, float] = {}
        self._last_created: datetime | None = None
        # Late applications not yet done, and a count that reset() bumps so none outlives it.
        self._pending: set[threading.Timer] = set()
        self._generation = 0
        self._requests: list[dict[str, Any]] = []
        self._faults = FaultQueue()
        self._limits = RateLimiter()
        self._server: _Server | None = None
        self._thread: threading.Thread | None = None

    # -- lifecycle ----------------------------------------------------------------------------

    def start(self) -> Care360Simulator:
        """Bind and serve in a background thread; returns ``self``."""
        if self._server is not None:
            raise RuntimeError("the simulator is already running")
        server = _Server(self)
        self._server = server
        self.port = server.server_address[1]
        # A short poll interval: stop() waits for the serving loop to notice, up to one interval.
        self._thread = threading.Thread(
            target=server.serve_forever, kwargs={"poll_interval": 0.05}, name="care360-simulator", daemon=True
        )
        self._thread.start()
        return self

    def stop(self) -> None:
        """Stop serving and close the listening socket; late applications still pending are dropped."""
        server, self._server = self._server, None
        if server is None:
            return
        self._drop_pending()
        server.shutdown()
        server.server_close()
        if self._thread is not None:
            self._thread.join(timeout=5)

    def __enter__(self) -> Care360Simulator:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def __repr__(self) -> str:
        return f"Care360Simulator(url={self.url!r}, bookings={len(self._bookings)})"

    @property
    def url(self) -> str:
        """Base URL of the running simulator, e.g. ``http://127.0.0.1:8360``."""
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{host}:{self.port}"

    def connection_uri_json(self, **extra: Any) -> str:
        """A connection in Airflow's JSON form that points at this simulator."""
        conn: dict[str, Any] = {"conn_type": "care360", "host": self.url, "password": self.api_key}
        if extra:
            conn["extra"] = extra
        return json.dumps(conn)

    def airflow_connection_env(self, conn_id: str = "care360_default", **extra: Any) -> dict[str, str]:
        """``{"AIRFLOW_CONN_<ID>": ...}`` to put in ``os.environ`` for a connection to this simulator."""
        return {f"AIRFLOW_CONN_{conn_id.upper()}": self.connection_uri_json(**extra)}

    # -- ledger and faults --------------------------------------------------------------------

    @property
    def bookings(self) -> list[dict[str, Any]]:
        """A copy of every booking the simulator applied through the API, oldest first."""
        with self._lock:
            return [dict(b) for b in self._bookings if b["source"] == "api"]

    @property
    def appointments(self) -> list[dict[str, Any]]:
        """A copy of every appointment: those booked through the API and those pre-loaded."""
        with self._lock:
            return [dict(b) for b in self._bookings]

    def add_appointment(
        self,
        *,
        email: str,
        start: str | datetime,
        event_type_id: str = "preloaded",
        duration_minutes: int | None = None,
        status: str = "CONFIRMED",
        is_deleted: bool = False,
    ) -> dict[str, Any]:
        """
        Pre-load an appointment, as if it were booked elsewhere (another tool, a person).

        It shows in lookups for ``email`` at once (``lookup_lag`` does not apply) and takes its slot,
        whatever its status, but is not one of :attr:`bookings`.

        :param status: the ``status`` its lookup element carries (Care360 documents ``CONFIRMED`` and
            leaves the others open: ``CANCELLED``, ``PENDING``, anything); it is returned by lookups
            whatever it is, for the client to decide what it means.
        :param is_deleted: the ``isDeleted`` its lookup element carries; returned by lookups all the
            same (the API says it leaves deleted ones out; a test can check a client that doubts it).
        :return: the stored appointment (with its ``id``).
        """
        if not isinstance(status, str) or not status:
            raise ValueError(f"status must be a non-empty string, got {status!r}")
        if not isinstance(is_deleted, bool):
            raise ValueError(f"is_deleted must be true or false, got {is_deleted!r}")
        begin = datetime.fromisoformat(start) if isinstance(start, str) else start
        if begin.tzinfo is None:
            raise ValueError("start must be aware (give an offset or Z)")
        return self._store(
            {"eventTypeId": event_type_id, "email": email, "startTime": utc(begin)},
            source="preloaded",
            force=True,
            duration=duration_minutes,
            status=status,
            is_deleted=is_deleted,
        )

    def cancel_appointment(self, appointment_id: str) -> bool:
        """Cancel an appointment: it leaves lookups and frees its slot. False if there is no such id."""
        with self._lock:
            for item in self._bookings:
                if item["id"] == appointment_id and not item["cancelled"]:
                    item["cancelled"] = True
                    self._taken.discard((item["eventTypeId"], item["slot"]))
                    return True
        return False

    @property
    def requests(self) -> list[dict[str, Any]]:
        """
        A copy of every API request received (method, path, query, headers, body, status, at).

        ``at`` is when it arrived and ``answered`` when its answer (or its connection's reset) was
        about to be sent, stamped before the send: ``None`` while the request waits out its latency,
        so a request still ``None`` is one whose client has had no answer yet. A request answered
        by a fault also has ``fault``; one with ``apply_after`` has ``applied``:
        ``None`` while its late application is pending, then ``True`` (booked) or ``False`` (its
        body broke a booking rule, or its one-on-one slot was booked in the meantime).
        """
        with self._lock:
            return [dict(r) for r in self._requests]

    @property
    def booking_requests(self) -> list[dict[str, Any]]:
        """The booking POSTs among :attr:`requests`."""
        return [r for r in self.requests if r["method"] == "POST" and r["path"] == APPOINTMENTS]

    @property
    def lookup_requests(self) -> list[dict[str, Any]]:
        """The Fetch Appointments GETs among :attr:`requests`."""
        return [r for r in self.requests if r["method"] == "GET" and r["path"] == APPOINTMENTS]

    def reset(self) -> None:
        """Forget bookings, requests, pending faults and late applications, and the rate-limit windows."""
        self._drop_pending()
        with self._lock:
            self._bookings.clear()
            self._taken.clear()
            self._entered.clear()
            self._requests.clear()
        self._faults.clear()
        self._limits.clear()

    def wait_pending(self, timeout: float | None = 10.0) -> bool:
        """
        Wait until every late application (:attr:`Fault.apply_after`) due so far is done.

        Lets a test assert what the ledger holds once the backend "caught up", without sleeping.
        :return: ``True`` when none is pending, ``False`` if ``timeout`` seconds passed first.
        """
        with self._settled:
            return self._settled.wait_for(lambda: not self._pending, timeout)

    def _drop_pending(self) -> None:
        with self._settled:
            self._generation += 1
            for timer in self._pending:
                timer.cancel()
            self._pending.clear()
            self._settled.notify_all()

    def inject(self, fault: Fault, times: int = 1) -> None:
        """Answer the next ``times`` requests of the fault's ``target`` with ``fault``."""
        self._faults.add(fault, times)

    # -- the contract -------------------------------------------------------------------------

    def _next_fault(self, target: str) -> Fault | None:
        return self._faults.next(target)

    def _rate_limited(self, kind: str = "booking") -> tuple[bool, dict[str, str]]:
        limit, window = (
            (self.rate_limit, self.rate_window)
            if kind in ("booking", "cancel")
            else (self.lookup_rate_limit, self.lookup_rate_window)
        )
        quota = self.quota if kind == "booking" else None
        tiers = [] if limit is None else [Tier(kind, limit, window)]
        if quota is not None:
            tiers.append(Tier("quota", quota, self.quota_window))
        if not tiers:
            return False, {}
        # One atomic count over both tiers: a request that either refuses counts against neither.
        verdicts = self._limits.hit_all(tiers)
        if quota is not None and verdicts[-1].refused:
            # As Calendly: the reset of the long window, in seconds, and no Retry-After.
            return True, {
                "X-RateLimit-Limit": str(quota),
                "X-RateLimit-Remaining": "0",
                "X-RateLimit-Reset": str(verdicts[-1].reset_in),
            }
        if limit is None:
            return False, {}
        limited, remaining, reset_in = verdicts[0]
        headers: dict[str, str] = {}
        if self.rate_limit_headers:
            headers = {
                "X-RateLimit-Limit": str(limit),
                "X-RateLimit-Remaining": str(remaining),
                "X-RateLimit-Reset": str(reset_in),
            }
        if limited and self.send_retry_after:
            headers["Retry-After"] = str(reset_in)
        return limited, headers

    def _latency_for(self, target: str) -> float:
        """How long a request of ``target`` waits before it is answered."""
        override = {"booking": self.booking_latency, "lookup": self.lookup_latency}.get(target)
        return self.latency if override is None else override

    def _check_booking(self, body: Any) -> str | None:
        return booking_problem(
            body, slot_minutes=self.slot_minutes, zone=self._zone, event_types=self.event_types
        )

    def _cancel(self, body: Any) -> tuple[int, Any]:
        """Cancel Appointment (section 2b): the appointment leaves lookups and frees its slot."""
        problem = cancel_problem(body)
        if problem:
            return 400, envelope(400, "Invalid request", problem)
        with self._lock:
            for item in self._bookings:
                if (
                    item["id"] == body["appointmentId"]
                    and item["email"].lower() == body["email"].lower()
                    and not item["cancelled"]
                ):
                    item["cancelled"] = True
                    self._taken.discard((item["eventTypeId"], item["slot"]))
                    return 200, envelope(200, "Meeting cancelled successfully")
        return 400, envelope(400, "Invalid request", "no active appointment with this id for this email")

    def _availability(self, query: dict[str, list[str]]) -> tuple[int, Any]:
        return availability_answer(query)

    def _apply(self, body: dict[str, Any], force: bool = False) -> str | None:
        """Record a booking; the slot-taken error if the slot was booked already."""
        stored = self._store(body, source="api", force=force)
        return None if stored else "startTime is not a correct slot: it is already booked"

    def _store(
        self,
        body: dict[str, Any],
        *,
        source: str,
        force: bool,
        duration: int | None = None,
        status: str = "CONFIRMED",
        is_deleted: bool = False,
        generation: int | None = None,
    ) -> dict[str, Any]:
        """
        Add an appointment to the ledger; ``{}`` if its one-on-one slot is taken, or if ``generation``
        is given and :meth:`reset` ran since (a late application that must not outlive it).
        """
        start = datetime.fromisoformat(body["startTime"]).astimezone(UTC)
        slot = utc(start)
        end = start + timedelta(minutes=duration or self.slot_minutes)
        with self._lock:
            if generation is not None and generation != self._generation:
                return {}
            key = (body["eventTypeId"], slot)
            if not force and self.one_on_one and key in self._taken:
                return {}
            self._taken.add(key)
            # createdAt: milliseconds, strictly increasing, so two bookings made a few ms apart (or
            # in the same one) are told apart and ordered, as a client choosing the later needs.
            clock = datetime.now(UTC)
            now = clock.replace(microsecond=clock.microsecond // 1000 * 1000)
            if self._last_created is not None and now <= self._last_created:
                now = self._last_created + timedelta(milliseconds=1)
            self._last_created = now
            item = {
                **body,  # first: a body's stray fields ("id", "end", ...) never overwrite the ledger's
                "id": str(uuid.uuid4()),
                "slot": slot,
                "end": utc(end),
                "bookedAt": timestamp(now),
                "source": source,
                "cancelled": False,
                "status": status,
                "isDeleted": is_deleted,
            }
            self._bookings.append(item)
            self._entered[item["id"]] = time.monotonic()
            return dict(item)

    def _apply_later(self, body: Any, arrived: float, after: float, entry: dict[str, Any]) -> None:
        """
        Book ``body`` ``after`` seconds past ``arrived`` (a ``time.monotonic()``) on a timer thread,
        whatever the answer does meanwhile; ``after == 0`` books it now. Fills ``entry["applied"]``.
        """
        if not isinstance(body, dict) or self._check_booking(body) is not None:
            with self._lock:
                entry["applied"] = False
            return
        if after == 0:
            stored = self._store(body, source="api", force=False)
            with self._lock:
                entry["applied"] = bool(stored)
            return
        with self._settled:
            entry["applied"] = None
            generation = self._generation

            def fire() -> None:
                self._apply_late(body, generation, entry, timer)

            timer = threading.Timer(max(0.0, arrived + after - time.monotonic()), fire)
            timer.daemon = True
            timer.name = "care360-simulator-apply-after"
            self._pending.add(timer)
            timer.start()

    def _apply_late(
        self, body: dict[str, Any], generation: int, entry: dict[str, Any], timer: threading.Timer
    ) -> None:
        stored: dict[str, Any] = {}
        try:
            stored = self._store(body, source="api", force=False, generation=generation)
        finally:  # even if storing failed, the timer is no longer pending
            with self._settled:
                if generation == self._generation:
                    entry["applied"] = bool(stored)
                self._pending.discard(timer)
                self._settled.notify_all()

    def _lookup(self, query: dict[str, list[str]]) -> tuple[int, Any]:
        lag = self.lookup_lag
        now = time.monotonic()
        with self._lock:
            ledger = [
                dict(b)
                for b in self._bookings
                if not lag or b["source"] != "api" or self._entered.get(b["id"], 0.0) + lag <= now
            ]
        return lookup_answer(ledger, query)

    def _record(self, entry: dict[str, Any]) -> None:
        with self._lock:
            self._requests.append(entry)

    def _answered(self, entry: dict[str, Any]) -> None:
        with self._lock:
            entry["answered"] = time.time()

    def booked_count(self, email: str | None = None) -> int:
        """How many bookings were applied through the API (for one invitee email, if given)."""
        with self._lock:
            return sum(
                1 for b in self._bookings if b["source"] == "api" and (email is None or b["email"] == email)
            )


class _Refused(Exception):
    """
    A request the simulator answers with ``status`` before routing it (bad framing, too big).

    ``unread`` is how many bytes of the body are left to drain: a number when the framing says so,
    ``None`` when it cannot tell (drain until the client stops sending), 0 for nothing.
    """

    def __init__(self, status: int, error: str, unread: int | None = None) -> None:
        super().__init__(error)
        self.status = status
        self.error = error
        self.unread = unread


class _Server(ThreadingHTTPServer):
    """The HTTP server: one thread per connection, a listen backlog that takes a burst of clients."""

    daemon_threads = True
    request_queue_size = 128

    def __init__(self, simulator: Care360Simulator) -> None:
        self.simulator = simulator
        family = socket.AF_INET6 if ":" in simulator.host else socket.AF_INET
        self.address_family = family
        super().__init__((simulator.host, simulator.port), _Handler)


@functools.cache
def _OPENAPI_BYTES() -> bytes:  # noqa: N802
    return json.dumps(openapi_document()).encode()


_CONTENT_LENGTH = re.compile(r"[0-9]{1,19}")
_CHUNK_SIZE = re.compile(rb"[0-9A-Fa-f]{1,8}")


class _Handler(BaseHTTPRequestHandler):
    """
    One connection. Every request, whatever its framing, method or body, gets a JSON answer in the
    documented envelope (or a queued fault): nothing a client sends raises out of here.
    """

    server: _Server
    protocol_version = "HTTP/1.1"
    # Answer a request line without a version (HTTP/0.9 style) with a status line and headers too.
    default_request_version = "HTTP/1.1"
    server_version = "Care360Simulator"
    timeout = 30  # idle keep-alive connections are closed after this
    # Headers and body go out in two writes; without TCP_NODELAY the second waits for the client's
    # delayed ACK (~40 ms a request).
    disable_nagle_algorithm = True

    @property
    def sim(self) -> Care360Simulator:
        return self.server.simulator

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002
        pass  # quiet: no request lines (they would carry invitee data) on stderr

    # -- plumbing -------------------------------------------------------------------------------

    def send_error(self, code: int, message: str | None = None, explain: str | None = None) -> None:
        """What http.server sends for framing it cannot parse (400, 414, 431, 501), as JSON."""
        self.close_connection = True
        short = message or self.responses.get(code, ("Error",))[0]
        self._send(code, envelope(code, short, explain or short))

    def _send(
        self,
        status: int,
        body: Any,
        headers: dict[str, str] | None = None,
        content_type: str = "application/json",
    ) -> None:
        if isinstance(body, bytes):
            data = body
        elif isinstance(body, str):
            data = body.encode()
        else:
            data = json.dumps(body).encode()
        try:
            self.send_response(status)
            self.send_header("Content-Type", content_type)
            self.send_header("Content-Length", str(len(data)))
            for name, value in (headers or {}).items():
                self.send_header(name, value)
            if self.close_connection:
                self.send_header("Connection", "close")
            self.end_headers()
            if getattr(self, "command", None) != "HEAD":
                self.wfile.write(data)
            self.wfile.flush()
        except OSError:
            self.close_connection = True  # the client went away (e.g. after its read timeout)

    def _reset(self) -> None:
        # SO_LINGER with a zero timeout makes close() send a TCP RST.
        self.connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        self.close_connection = True
        self.connection.close()

    def _read_body(self) -> bytes:
        """The request body by its framing; raises ``_Refused`` for framing the simulator won't take."""
        encoding = self.headers.get("Transfer-Encoding")
        if encoding is not None:
            if encoding.strip().lower() != "chunked":
                raise _Refused(501, "Transfer-Encoding: only chunked is supported")
            return self._read_chunked()
        lengths = self.headers.get_all("Content-Length") or []
        if not lengths:
            return b""  # HTTP/1.1: no Content-Length and no Transfer-Encoding is an empty body
        if len(set(lengths)) > 1 or not _CONTENT_LENGTH.fullmatch(lengths[0].strip()):
            raise _Refused(400, "Content-Length must be one decimal number of bytes")
        length = int(lengths[0])
        if length > MAX_REQUEST_BYTES:  # refused before a byte of it is read
            raise _Refused(413, f"the body is over {MAX_REQUEST_BYTES} bytes", unread=length)
        data = self.rfile.read(length)
        if len(data) < length:
            raise _Refused(400, "the body ended before Content-Length bytes", unread=0)
        return data

    def _read_chunked(self) -> bytes:
        body = bytearray()
        while True:
            line = self.rfile.readline(1024)
            size = line.split(b";", 1)[0].strip()
            if not line.endswith(b"\n") or not _CHUNK_SIZE.fullmatch(size):
                raise _Refused(400, "malformed chunked body")
            length = int(size, 16)
            if length == 0:
                break
            if len(body) + length > MAX_REQUEST_BYTES:
                raise _Refused(413, f"the body is over {MAX_REQUEST_BYTES} bytes")
            chunk = self.rfile.read(length)
            if len(chunk) < length or self.rfile.readline(3) not in (b"\r\n", b"\n"):
                raise _Refused(400, "malformed chunked body")
            body += chunk
        for _ in range(64):  # trailer fields, ignored, up to the blank line
            line = self.rfile.readline(8192)
            if line in (b"\r\n", b"\n", b""):
                return bytes(body)
        raise _Refused(400, "malformed chunked body")

    def _drain(self, unread: int | None) -> None:
        """
        After a refusal went out with ``Connection: close``: read and drop the rest of the body, so
        that closing the socket does not reset a client still sending it before it reads the answer
        (closing with unread data sends a TCP RST). Bounded: at most ``unread`` (when known) and
        ``DRAIN_MAX_BYTES`` bytes, ``DRAIN_SECONDS`` in all, and one second without data.
        """
        budget = DRAIN_MAX_BYTES if unread is None else min(unread, DRAIN_MAX_BYTES)
        deadline = time.monotonic() + DRAIN_SECONDS
        try:
            self.connection.shutdown(socket.SHUT_WR)  # the answer is complete: FIN after it
            while budget > 0:
                left = deadline - time.monotonic()
                if left <= 0:
                    break
                self.connection.settimeout(min(left, _DRAIN_IDLE_SECONDS))
                data = self.rfile.read1(min(budget, 1 << 16))
                if not data:
                    break
                budget -= len(data)
        except OSError:  # a timeout, or the client is gone: either way, done
            pass

    def _key_state(self) -> str:
        given = self.headers.get("cv-api-key")
        if given is None:
            return "missing"
        return "valid" if hmac.compare_digest(given.encode(), self.sim.api_key.encode()) else "invalid"

    def _entry(self, method: str, path: str, query: dict[str, list[str]], body: Any) -> dict[str, Any]:
        """A request as :attr:`Care360Simulator.requests` records it: the key's value never kept."""
        return {
            "method": method,
            "path": path,
            "query": query,
            "headers": {
                name: "***" if name.lower() == "cv-api-key" else value for name, value in self.headers.items()
            },
            "key": self._key_state(),
            "client": list(self.client_address[:2]),
            "at": time.time(),
            "answered": None,
            "body": body,
        }

    # -- dispatch -------------------------------------------------------------------------------

    def __getattr__(self, name: str) -> Any:
        # http.server looks up do_<METHOD>: every method, GET and POST as much as TRACE or BREW,
        # goes to _dispatch, which answers a method a path does not take with 405 and Allow.
        if name.startswith("do_") and name[3:].isascii() and name[3:].isalpha() and name[3:].isupper():
            return lambda: self._dispatch(name[3:])
        raise AttributeError(name)

    def _dispatch(self, method: str) -> None:
        arrived = time.monotonic()
        try:
            url = urlsplit(self.path)
            if method == "POST":
                raw = self._read_body()
            elif "Content-Length" in self.headers or "Transfer-Encoding" in self.headers:
                self._read_body()  # read and drop it, so the connection stays in step
                raw = b""
            else:
                raw = b""
            if url.path == OPENAPI_PATH:
                if method in ("GET", "HEAD"):
                    self._send(200, _OPENAPI_BYTES())
                else:
                    self._send(405, envelope(405, "Method not allowed", "GET only"), {"Allow": "GET"})
                return
            if url.path.startswith(ADMIN + "/") or url.path == ADMIN:
                self._admin(method, url.path[len(ADMIN) :], raw)
                return
            allowed = _ROUTES.get(url.path)
            if allowed is None:
                self._send(404, envelope(404, "Not found", f"no endpoint at {url.path}"))
            elif method not in allowed:
                self._send(
                    405,
                    envelope(405, "Method not allowed", f"{url.path} takes {', '.join(allowed)}"),
                    {"Allow": ", ".join(allowed)},
                )
            else:
                self._route(method, url.path, parse_qs(url.query), raw, arrived)
        except _Refused as refused:
            self.close_connection = True
            self._send(refused.status, envelope(refused.status, "Invalid request", refused.error))
            if refused.unread != 0:
                self._drain(refused.unread)
        except Exception as exc:  # a defect of the simulator: still an answer, never a dropped line
            self.close_connection = True
            self._send(500, envelope(500, "Simulator error", type(exc).__name__))

    def _route(self, method: str, path: str, query: dict[str, list[str]], raw: bytes, arrived: float) -> None:
        sim = self.sim
        body: Any = None
        parsed = True
        if method == "POST":
            try:
                body = json.loads(raw) if raw else None
            except (ValueError, RecursionError):
                body, parsed = raw.decode("utf-8", "replace")[:2000], False
        target = _TARGETS[(method, path)]
        entry = self._entry(method, path, query, body)
        fault = sim._next_fault(target)
        if fault is not None:
            entry["status"] = "reset" if fault.reset else fault.status
            entry["fault"] = asdict(fault) | {"body": None}
            sim._record(entry)
            self._answer_fault(fault, body if parsed and target == "booking" else None, arrived, entry)
            return
        status, answer, headers = self._answer(target, query, body, parsed)
        entry["status"] = status
        sim._record(entry)
        self._wait(sim._latency_for(target))
        sim._answered(entry)
        self._send(status, answer, headers)

    @staticmethod
    def _wait(seconds: float) -> None:
        # Only this connection's thread sleeps: the server is threaded, others are served meanwhile.
        if seconds > 0:
            time.sleep(seconds)

    def _answer(
        self, target: str, query: dict[str, list[str]], body: Any, parsed: bool
    ) -> tuple[int, Any, dict[str, str]]:
        sim = self.sim
        if self._key_state() != "valid":
            return 401, DOCUMENTED[401], {}
        limited, headers = sim._rate_limited(target)
        if limited:
            return 429, DOCUMENTED[429], headers
        if target == "lookup":
            status, answer = sim._lookup(query)
            return status, answer, headers
        if target == "availability":
            status, answer = sim._availability(query)
            return status, answer, headers
        if not parsed:
            return 400, envelope(400, "Invalid request", "body must be valid JSON"), headers
        if self.headers.get_content_type() != "application/json":
            return 400, envelope(400, "Invalid request", "Content-Type must be application/json"), headers
        if target == "cancel":
            status, answer = sim._cancel(body)
            return status, answer, headers
        problem = sim._check_booking(body) or sim._apply(body)
        if problem:
            return 400, envelope(400, "Invalid request", problem), headers
        return 200, DOCUMENTED[200], headers

    def _answer_fault(self, fault: Fault, body: Any, arrived: float, entry: dict[str, Any]) -> None:
        sim = self.sim
        if fault.apply and isinstance(body, dict) and sim._check_booking(body) is None:
            sim._apply(body, force=True)
        if fault.apply_after is not None and fault.target == "booking":
            sim._apply_later(body, arrived, fault.apply_after, entry)
        self._wait(sim._latency_for(fault.target))
        self._wait(fault.delay)
        sim._answered(entry)
        if fault.reset:
            self._reset()
            return
        answer = fault.body
        if answer is None:
            answer = DOCUMENTED.get(fault.status) or envelope(fault.status, "Simulated fault")
        self._send(fault.status, answer, fault.headers, fault.content_type)

    # -- admin ------------------------------------------------------------------------------------

    def _admin_allowed(self) -> bool:
        token = self.sim.admin_token
        if token:
            given = self.headers.get(ADMIN_TOKEN_HEADER, "")
            return hmac.compare_digest(given.encode(), token.encode())
        try:
            address = ipaddress.ip_address(str(self.client_address[0]).split("%", 1)[0])
        except ValueError:
            return False
        mapped = getattr(address, "ipv4_mapped", None)
        return bool((mapped or address).is_loopback)

    def _admin(self, method: str, path: str, raw: bytes) -> None:
        sim = self.sim
        if not self._admin_allowed():
            self._send(
                403,
                envelope(
                    403,
                    "Forbidden",
                    f"admin endpoints answer loopback clients, or a request with {ADMIN_TOKEN_HEADER}",
                ),
            )
            return
        allowed = _ADMIN_ROUTES.get(path)
        if allowed is None:
            self._send(404, envelope(404, "Not found", f"no endpoint at {ADMIN}{path}"))
            return
        if method not in allowed:
            self._send(
                405,
                envelope(405, "Method not allowed", f"{ADMIN}{path} takes {', '.join(allowed)}"),
                {"Allow": ", ".join(allowed)},
            )
            return
        if path == "/bookings":
            self._send(200, sim.bookings)
        elif path == "/requests":
            self._send(200, sim.requests)
        elif path == "/health":
            self._send(200, {"ok": True, "bookings": sim.booked_count()})
        elif path == "/reset":
            sim.reset()
            self._send(200, {"ok": True})
        elif path == "/faults":
            try:
                items = json.loads(raw) if raw else None
                if not isinstance(items, (list, dict)):
                    raise TypeError("the body must be a fault object or a list of them")
                faults = [Fault(**item) for item in (items if isinstance(items, list) else [items])]
            except (ValueError, TypeError, RecursionError) as exc:
                self._send(400, {"ok": False, "error": str(exc)[:500]})
                return
            for fault in faults:
                sim.inject(fault)
            self._send(200, {"ok": True, "queued": len(faults)})
        elif path == "/appointments":
            try:
                item = json.loads(raw) if raw else None
                if not isinstance(item, dict):
                    raise TypeError("the body must be an object with email and start")
                if "isDeleted" in item:  # the lookup element's spelling
                    item["is_deleted"] = item.pop("isDeleted")
                stored = sim.add_appointment(**item)
            except (ValueError, TypeError, RecursionError, OverflowError) as exc:
                self._send(400, {"ok": False, "error": str(exc)[:500]})
                return
            self._send(200, {"ok": True, "appointment": stored})


#: Methods each API path takes, and which queue of faults and rate limit each request uses.
_ROUTES: dict[str, tuple[str, ...]] = {
    APPOINTMENTS: ("GET", "POST"),
    CANCEL: ("POST",),
    AVAILABILITY: ("GET",),
    AVAILABILITY_ALIAS: ("GET",),
}
_TARGETS: dict[tuple[str, str], str] = {
    ("POST", APPOINTMENTS): "booking",
    ("GET", APPOINTMENTS): "lookup",
    ("POST", CANCEL): "cancel",
    ("GET", AVAILABILITY): "availability",
    ("GET", AVAILABILITY_ALIAS): "availability",
}
_ADMIN_ROUTES: dict[str, tuple[str, ...]] = {
    "/bookings": ("GET",),
    "/requests": ("GET",),
    "/health": ("GET",),
    "/reset": ("POST",),
    "/faults": ("POST",),
    "/appointments": ("POST",),
}
