"""
Batches: the booking engine row by row, ``concurrency`` at a time, at the API's pace, resumable.

:class:`BatchJournal` keeps each row's journal entry in ``task_state_store`` compactly, a few rows'
worth of JSON per key (a key holds at most :data:`ROWS_PER_KEY` rows, well under the 64 KiB the REST
API accepts); :class:`RowJournal` gives :class:`~airflow_provider_care360.booking.engine.BookingEngine`
the same interface as the single booking's journal, so a row follows exactly the single operator's
rules. A row's in-flight entry is written before its booking is sent (the fence), its outcome when
known. :class:`Pacer` is the rate-limit state every worker shares: ``max_rate`` spaces bookings out
below a known limit, and a 429 pauses every worker until the time Care360 named. :func:`run_batch`
books the rows and returns one result per row. Pure code: no Airflow imports.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterable, Mapping
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from dataclasses import dataclass, field
from typing import Any

from airflow_provider_care360.booking.engine import BookingEngine, BookingHook, BookingOptions, Clock, Logger
from airflow_provider_care360.booking.journal import Entry, StateStore, fingerprint
from airflow_provider_care360.exceptions import (
    Care360AuthError,
    Care360ConnectionConfigError,
    Care360Error,
    Care360LookupUnusableError,
    Care360RateLimitError,
    Care360ValidationError,
)
from airflow_provider_care360.outcomes import Outcome

__all__ = [
    "FATAL",
    "FINAL",
    "ROWS_PER_KEY",
    "BatchJournal",
    "BatchRun",
    "Pacer",
    "Row",
    "RowResult",
    "run_batch",
]

#: How many rows' entries one ``task_state_store`` key holds (about 80 to 110 bytes a row, so about
#: 11 KB a key: each write rewrites one key, and stays far under the REST API's 64 KiB a value).
ROWS_PER_KEY = 100
KEY_PREFIX = "care360_batch/"
#: Outcomes that running again cannot change: a row that has one is not looked up or sent again.
FINAL = frozenset({Outcome.BOOKED, Outcome.ALREADY_BOOKED, Outcome.REJECTED, Outcome.DUPLICATE})


@dataclass(frozen=True)
class Row:
    """One row to book: its index in ``rows``, its validated body, and a past-start error if any."""

    index: int
    payload: dict[str, Any]
    past_start: Care360ValidationError | None = None


@dataclass
class RowResult:
    """What came of one row."""

    index: int
    outcome: Outcome
    message: str
    http_status: int | None = None
    response: dict[str, Any] | None = None
    appointment: dict[str, Any] | None = None
    cancelled: list[str] = field(default_factory=list)
    retry_after: float | None = None


class BatchJournal:
    """
    Every row's journal entry, in ``task_state_store`` keys of :data:`ROWS_PER_KEY` rows each.

    An entry is ``[state, fingerprint, attempt, sent_at, window, unclear_at, outcome, try]``, with
    state ``"s"`` (sending) or ``"d"`` (done).

    Writes are grouped. A durable write (a row's in-flight entry, the fence) returns only once the
    store holds its key with that entry, and raises if the store refuses, so the row's booking is
    not sent; one ``set`` carries every change made to the key meanwhile, so rows waiting on the
    same key share it (calls to the store go one at a time: see ``_io``). A lazy write (an
    outcome, a dropped entry) changes only the copy in memory: it goes with the key's next durable
    write, or with :meth:`flush` at the end of the batch. A lazy write lost in a crash leaves the
    row's in-flight entry in the store, which only makes the next try wait out the row's apply
    window and look it up: it never makes a row book twice.
    """

    def __init__(
        self,
        store: StateStore,
        *,
        try_number: int | None,
        attempt: int | None,
        clock: Callable[[], float] = time.time,
        key: str | None = None,
    ) -> None:
        self._store = store
        self.key = key
        self.try_number = try_number
        self.attempt = attempt
        self._clock = clock
        self._lock = threading.Lock()  # guards the copies in memory and the versions
        #: Each key's rows; a key's dict is replaced, never changed, so a snapshot can be stored unlocked.
        self._keys: dict[int, dict[str, list[Any]]] = {}
        self._version: dict[int, int] = {}  # changes made to each key in memory
        self._stored: dict[int, int] = {}  # the version the store holds
        #: One call to the store at a time, whatever the key. A task's calls go one at a time to its
        #: supervisor anyway (sdk/execution_time/comms.py: CommsDecoder.send holds _thread_lock), but
        #: dag.test()'s in-process stand-in has no lock and unsets SUPERVISOR_COMMS while it handles
        #: each call (supervisor.py: InProcessSupervisorComms.send), so concurrent calls fail there.
        self._io = threading.Lock()
        #: How many times the store was written (for the benchmark and the tests).
        self.sets = 0

    def load(self, indexes: Iterable[int]) -> None:
        """Read the keys these rows live in (also on try 1: a try resumed after a deferral has some)."""
        for key in sorted({i // ROWS_PER_KEY for i in indexes}):
            raw = self._store.get(f"{KEY_PREFIX}{key}")
            with self._lock:
                self._keys[key] = dict(raw) if isinstance(raw, Mapping) else {}

    def entry(self, index: int) -> Entry | None:
        with self._lock:
            raw = self._keys.get(index // ROWS_PER_KEY, {}).get(str(index))
        if not isinstance(raw, list) or len(raw) != 8 or raw[0] not in ("s", "d"):
            return None
        state, fp, attempt, sent_at, window, unclear_at, outcome, try_number = raw
        return Entry(
            state="sending" if state == "s" else "done",
            try_number=try_number if isinstance(try_number, int) else None,
            fingerprint=fp if isinstance(fp, str) else None,
            attempt=attempt if isinstance(attempt, int) else None,
            sent_at=float(sent_at) if isinstance(sent_at, (int, float)) else None,
            window=float(window) if isinstance(window, (int, float)) else None,
            unclear_at=float(unclear_at) if isinstance(unclear_at, (int, float)) else None,
            outcome=outcome if isinstance(outcome, str) else None,
        )

    def settled(self, index: int, fp: str) -> Outcome | None:
        """The final outcome this attempt recorded for the row with this body, if any."""
        entry = self.entry(index)
        if entry is None or entry.state != "done" or entry.fingerprint != fp or self.is_stale(entry):
            return None
        try:
            outcome = Outcome(entry.outcome or "")
        except ValueError:
            return None
        return outcome if outcome in FINAL else None

    def is_stale(self, entry: Entry) -> bool:
        return self.attempt is not None and entry.attempt != self.attempt

    def write(self, index: int, value: list[Any] | None, *, durable: bool = True) -> None:
        """
        Set (or, with ``None``, drop) one row's entry. Durable: returns once the store holds it, and
        raises if the store refuses. Lazy: stored with the key's next durable write or :meth:`flush`.
        """
        key = index // ROWS_PER_KEY
        with self._lock:
            rows = dict(self._keys.get(key, {}))
            if value is None:
                rows.pop(str(index), None)
            else:
                rows[str(index)] = value
            self._keys[key] = rows
            version = self._version[key] = self._version.get(key, 0) + 1
        if durable:
            self._store_key(key, version)

    def _store_key(self, key: int, version: int) -> None:
        with self._io:
            with self._lock:
                if self._stored.get(key, 0) >= version:
                    return  # a write for another row carried this one
                rows, latest = self._keys[key], self._version[key]
            self._store.set(f"{KEY_PREFIX}{key}", rows)
            with self._lock:
                self.sets += 1
                self._stored[key] = max(self._stored.get(key, 0), latest)

    def flush(self) -> None:
        """Store every key that has changes the store does not hold yet; raises if the store does."""
        with self._lock:
            pending = [(key, v) for key, v in self._version.items() if self._stored.get(key, 0) < v]
        for key, version in pending:
            self._store_key(key, version)

    def now(self) -> float:
        return self._clock()


class RowJournal:
    """One row's view of a :class:`BatchJournal`, with the single booking journal's interface."""

    def __init__(self, batch: BatchJournal, index: int, payload: Mapping[str, Any]) -> None:
        self._batch = batch
        self.index = index
        self.fingerprint = fingerprint(payload, batch.key)
        self.try_number = batch.try_number
        self.attempt = batch.attempt
        self._sending: list[Any] | None = None

    def prior(self) -> Entry | None:
        return self._batch.entry(self.index)

    def is_stale(self, entry: Entry) -> bool:
        return self._batch.is_stale(entry)

    def _entry(self, state: str, **fields: Any) -> list[Any]:
        values = {"sent_at": None, "window": None, "unclear_at": None, "outcome": None, **fields}
        return [
            state,
            self.fingerprint,
            self.attempt,
            values["sent_at"],
            values["window"],
            values["unclear_at"],
            values["outcome"],
            self.try_number,
        ]

    def sending(self, window: float) -> None:
        self._sending = self._entry("s", sent_at=round(self._batch.now(), 3), window=window)
        try:
            self._batch.write(self.index, self._sending)
        except BaseException:
            # Not stored, so not sent: drop it from memory too, or the next write of the key would
            # store an in-flight entry for a booking that never left.
            self._batch.write(self.index, None, durable=False)
            raise

    def unclear(self) -> float:
        at = round(self._batch.now(), 3)
        entry = list(self._sending or self._entry("s"))
        entry[5] = at
        self._batch.write(self.index, entry)
        return at

    def done(self, outcome: str) -> None:
        # Lazy: stored with the key's next in-flight entry or the batch's flush (see BatchJournal).
        self._batch.write(self.index, self._entry("d", outcome=outcome), durable=False)

    def known(self, outcome: str) -> None:
        # Unlike a single booking's, a row's known outcome is kept: a retry after a crash skips it.
        self.done(outcome)

    def forget(self) -> None:
        """Nothing was applied: drop the row's in-flight entry (lazy, as an outcome is)."""
        self._batch.write(self.index, None, durable=False)

    def settle(self, outcome: Outcome) -> None:
        """Record a row's final outcome (the engine records ``booked`` itself)."""
        self.done(outcome.value)


class Stopped(Exception):
    """The batch stopped (a long wait, a fatal error, Airflow stopping the task) while a row waited."""


#: Added to ``max_rate``'s window: a booking is counted from the moment it is handed to the HTTP
#: client, and Care360 counts it on arrival, a few milliseconds later and not always in the same order
#: (the threads take turns), so a window paced to the exact limit would meet a 429 now and then, and a
#: 429 names its wait in whole seconds.
PACE_MARGIN = 0.05
#: How far ahead of its time a place is given: the row writes its in-flight entry meanwhile, then
#: waits out the rest (``at_send``), so the write does not push each window's sends later.
PACE_LEAD = 0.1


class Pacer:
    """
    The rate-limit state every worker shares.

    :param max_rate: ``(n, seconds)``: at most ``n`` bookings sent in any ``seconds`` window (plus
        :data:`PACE_MARGIN`), so a known limit is never hit; ``None`` for no pacing. A booking is
        counted from its send (:meth:`sent`), not from the moment it was given its place: between
        the two its in-flight entry is written, and that write's time varies. A place given and not
        yet sent counts as sent now, until it is sent or :meth:`released`. A place is given up to
        :data:`PACE_LEAD` ahead of its time, which :meth:`before_booking` returns.
    :param stop: set when the batch stops: every wait ends at once with :class:`Stopped`.
    """

    def __init__(
        self,
        max_rate: tuple[int, float] | None = None,
        *,
        stop: threading.Event | None = None,
        now: Callable[[], float] = time.monotonic,
    ) -> None:
        self.max_rate = max_rate
        self.stop = stop or threading.Event()
        self._now = now
        self._lock = threading.Lock()
        self._starts: list[float] = []  # the send times of the bookings in the current window
        self._held = 0  # places given whose booking is not sent yet
        self.paused_until = 0.0

    def pause(self, seconds: float) -> None:
        """A 429: no worker starts a request until ``seconds`` from now."""
        with self._lock:
            self.paused_until = max(self.paused_until, self._now() + max(0.0, seconds))

    def now(self) -> float:
        """This pacer's clock (monotonic)."""
        return self._now()

    def pause_left(self) -> float:
        return max(0.0, self.paused_until - self._now())

    def _wait(self, seconds: float) -> None:
        if self.stop.wait(min(max(seconds, 0.0), 1.0)):
            raise Stopped

    def before_booking(self) -> float:
        """
        Wait for any pause, then for a place within ``max_rate``, and hold it until :meth:`sent` or
        :meth:`released`; :class:`Stopped` if the batch stops. Returns the place's time (on this
        pacer's clock), at most :data:`PACE_LEAD` from now: the booking is not to be sent before it.
        """
        while True:
            if self.stop.is_set():
                raise Stopped
            with self._lock:
                now = self._now()
                at = now
                wait_for = self.paused_until - now
                if wait_for <= 0 and self.max_rate is not None:
                    n, seconds = self.max_rate
                    span = seconds + PACE_MARGIN
                    self._starts = [t for t in self._starts if t > now - span]
                    # Held places count as in the window until sent: their send time is not known.
                    over = len(self._starts) + self._held + 1 - n
                    if over > 0:
                        # Its place comes when the oldest sends leave the window (held ones leave later).
                        at = self._starts[over - 1] + span if over <= len(self._starts) else now + 0.01
                        wait_for = at - now - (PACE_LEAD if over <= len(self._starts) else 0.0)
                if wait_for <= 0:
                    self._held += 1
                    return max(now, at)
            self._wait(wait_for)

    def sent(self) -> None:
        """The booking of a place held since :meth:`before_booking` is being sent: count it from now."""
        with self._lock:
            self._held = max(0, self._held - 1)
            self._starts.append(self._now())

    def released(self) -> None:
        """A place held since :meth:`before_booking` was not used (the row stopped before its send)."""
        with self._lock:
            self._held = max(0, self._held - 1)

    def until(self, at: float) -> None:
        """Wait until ``at`` (this pacer's clock); :class:`Stopped` if the batch stops meanwhile."""
        while (left := at - self._now()) > 0:
            self._wait(left)
        if self.stop.is_set():
            raise Stopped

    def before_request(self) -> None:
        """Wait for any pause (lookups are not paced, but a 429 pauses them too)."""
        while (left := self.pause_left()) > 0:
            self._wait(left)
        if self.stop.is_set():
            raise Stopped


class PacedHook:
    """
    A hook whose requests wait for the shared :class:`Pacer`; one per worker thread, so it knows
    whether its thread holds a place for a booking, and that place's time.
    """

    def __init__(self, hook: BookingHook, pacer: Pacer) -> None:
        self._hook = hook
        self._pacer = pacer
        self._holding = False
        self._at = 0.0  # the held place's time
        self._ahead = 0.0  # how far ahead of its time the place was given

    @property
    def request_window(self) -> float:
        """The hook's, plus how far ahead the held place was given: the send may come that much later."""
        return self._hook.request_window + (self._ahead if self._holding else 0.0)

    def before_booking(self) -> None:
        """The engine's ``before_send``: wait for a place to send (ahead of the in-flight entry)."""
        self.release()
        self._at = self._pacer.before_booking()
        # From the moment the place was given, not from before the wait for it: at most PACE_LEAD.
        self._ahead = max(0.0, self._at - self._pacer.now())
        self._holding = True

    def at_send(self) -> None:
        """
        The engine's ``at_send``: wait out what is left of the held place's time. A stop ends the
        wait; the engine then sees it, drops the row's in-flight entry and sends nothing.
        """
        if self._holding:
            try:
                self._pacer.until(self._at)
            except Stopped:
                pass

    def release(self) -> None:
        """Give back a place this thread holds and did not send (a stop, a refused journal write)."""
        if self._holding:
            self._holding = False
            self._pacer.released()

    def appointments_at(self, *, email: str, start_time: str) -> Any:
        self._pacer.before_request()
        return self._hook.appointments_at(email=email, start_time=start_time)

    def send_booking(self, payload: dict[str, Any]) -> dict[str, Any]:
        # Paced by before_booking, ahead of the journal's in-flight entry; counted from here.
        if self._holding:
            self._holding = False
            self._pacer.sent()
        return self._hook.send_booking(payload)

    def cancel_appointment(
        self, *, email: str, appointment_id: str, reason: str | None = None
    ) -> dict[str, Any]:
        self._pacer.before_request()
        return self._hook.cancel_appointment(email=email, appointment_id=appointment_id, reason=reason)


@dataclass
class Progress:
    """Counts for the progress line."""

    total: int
    earlier: int = 0  # rows settled by an earlier try: not counted in the rate
    started: float = field(default_factory=time.monotonic)
    counts: dict[str, int] = field(default_factory=dict)

    def add(self, outcome: Outcome) -> None:
        self.counts[outcome.value] = self.counts.get(outcome.value, 0) + 1

    def line(self, left: int) -> str:
        finished = self.total - left
        settled = sum(n for k, n in self.counts.items() if Outcome(k) in FINAL)
        elapsed = max(1e-9, time.monotonic() - self.started)
        rate = max(0, finished - self.earlier) / elapsed
        eta = f"{left / rate:.0f} s" if rate > 0 and left else ("0 s" if not left else "unknown")
        counts = ", ".join(f"{k} {v}" for k, v in sorted(self.counts.items())) or "none yet"
        return (
            f"Care360 batch: {settled}/{self.total} rows settled ({counts}); {left} in progress or queued; "
            f"{rate:.1f} rows/s; ETA {eta}"
        )


#: Errors about the task itself, not one row: they stop the batch and fail the task, and are never
#: recorded as a row's final outcome (fix the key or the connection, and every row is booked).
FATAL = (Care360AuthError, Care360ConnectionConfigError, Care360LookupUnusableError)
#: 429s one row may meet in a row before the batch stops as throttled (a limit that never lifts).
MAX_THROTTLED = 20


@dataclass
class BatchRun:
    """What :func:`run_batch` did: one result per row, and the error that stopped it, if one did."""

    results: list[RowResult]
    fatal: Care360Error | None = None


def run_batch(
    rows: list[Row],
    *,
    hook_for: Callable[[], BookingHook],
    options: BookingOptions,
    journal: BatchJournal | None,
    log: Logger,
    concurrency: int = 4,
    max_rate: tuple[int, float] | None = None,
    max_sleep: float = 60.0,
    progress_every: float = 5.0,
    clock: Clock | None = None,
    stop: threading.Event | None = None,
    sink: dict[int, RowResult] | None = None,
) -> BatchRun:
    """
    Book ``rows``; one result per row, in row order.

    A row the journal knows is settled (this attempt, the same body) is neither looked up nor sent.
    A 429 pauses every worker; a pause longer than ``max_sleep`` stops the batch: the rows not yet
    sent are ``throttled``, with the named wait as their ``retry_after``. An error about the task
    itself (a rejected key, an unusable lookup, a bad connection) stops it too, as :attr:`BatchRun.fatal`.
    Rows in flight finish first, so no row is left half done by a stop.

    :param hook_for: makes a hook for one worker thread (each thread its own HTTP session).
    :param stop: set from outside (Airflow stopping the task: ``on_kill``) to send nothing more.
    :param sink: filled with each row's result as it comes, so a caller that is interrupted (a
        timeout) still has every finished row's result.
    """
    stop = stop or threading.Event()
    pacer = Pacer(max_rate, stop=stop)
    results: dict[int, RowResult] = sink if sink is not None else {}
    todo: list[Row] = []
    if journal is not None:
        journal.load(r.index for r in rows)
    for row in rows:
        settled = journal.settled(row.index, fingerprint(row.payload, journal.key)) if journal else None
        if settled is not None:
            results[row.index] = RowResult(
                row.index, settled, f"Settled by an earlier try of this task ({settled}); nothing was sent."
            )
        else:
            todo.append(row)
    if results:
        log.info("%d of %d rows were settled by an earlier try: not looked up again", len(results), len(rows))

    local = threading.local()
    longest_pause = [0.0]
    waited_out = threading.Event()  # the batch stopped itself for a wait longer than max_sleep
    fatal: list[Care360Error] = []

    def stopped(row: Row) -> RowResult:
        """A row the batch did not send because it stopped: say what stopped it."""
        if fatal:
            return RowResult(
                row.index,
                Outcome.NOT_SENT,
                f"The batch stopped: {fatal[0].summary}. Nothing was sent for this row.",
            )
        if waited_out.is_set():
            return _throttled(row, pacer.pause_left() or longest_pause[0])
        return RowResult(
            row.index,
            Outcome.NOT_SENT,
            "Airflow stopped the task (a timeout, a termination or a kill) before this row was sent; nothing "
            "was sent for it, and the next try books it.",
        )

    def book(row: Row) -> RowResult:
        if not hasattr(local, "hook"):
            local.hook = PacedHook(hook_for(), pacer)
        throttled = 0
        looked_absent = False  # this row's lookup found nothing and its booking was answered 429
        while True:
            if stop.is_set():
                return stopped(row)
            row_journal = RowJournal(journal, row.index, row.payload) if journal else None
            engine = BookingEngine(
                local.hook,
                row.payload,
                options,
                row_journal,
                log,
                past_start=row.past_start,
                clock=clock,
                should_stop=stop.is_set,
                before_send=local.hook.before_booking,
                at_send=local.hook.at_send,
                looked_absent=looked_absent,
            )
            try:
                try:
                    result = engine.run()
                finally:
                    local.hook.release()  # a place held for a booking that was not sent
            except Stopped:
                if engine.sent:  # stopped while settling an unclear answer: the booking may exist
                    return RowResult(
                        row.index,
                        Outcome.AMBIGUOUS,
                        "The batch stopped while this row's unclear answer was being settled: its booking "
                        "was sent and may exist. The next try waits out its apply window and looks it up.",
                        retry_after=options.apply_window + local.hook.request_window,
                    )
                return stopped(row)
            except Care360RateLimitError as exc:
                throttled += 1
                # A 429 to the booking itself is a refusal: after the pause the row is sent again
                # without another lookup (one lookup a row, however many 429s it meets).
                looked_absent = looked_absent or engine.throttled
                # A 429 naming no wait (or none at all) backs off, so a limit that never lifts does
                # not spin; one that keeps answering 429 stops the batch.
                wait_for = exc.retry_after if exc.retry_after else min(60.0, 2.0 ** min(throttled, 6))
                wait_for = max(1.0, wait_for)
                longest_pause[0] = max(longest_pause[0], wait_for)
                if wait_for > max_sleep or throttled >= MAX_THROTTLED:
                    pacer.pause(wait_for)
                    waited_out.set()
                    stop.set()
                    return _throttled(row, wait_for)
                pacer.pause(wait_for)
                log.info("Care360 rate limit (429): the batch pauses %.1f s", wait_for)
                continue
            except FATAL as exc:
                fatal.append(exc)
                stop.set()
                return RowResult(
                    row.index,
                    Outcome.NOT_SENT,
                    f"The batch stopped: {exc.summary}. Nothing was sent for this row.",
                )
            except Care360Error as exc:
                if stop.is_set() and not engine.sent and exc.outcome is Outcome.NOT_SENT:
                    # Stopped right before its send (a long wait, a fatal error, on_kill): like the
                    # rows not yet started (throttled after a long wait, so the batch resumes it).
                    return stopped(row)
                if row_journal and exc.outcome in FINAL:
                    row_journal.settle(exc.outcome)
                return RowResult(
                    row.index,
                    exc.outcome,
                    exc.message,
                    exc.http_status,
                    exc.response,
                    retry_after=exc.retry_after,
                )
            except Exception as exc:  # a journal write that failed, a defect: this row only
                outcome = Outcome.AMBIGUOUS if engine.sent else Outcome.NOT_SENT
                what = (
                    "after its booking was sent: it may exist" if engine.sent else "before anything was sent"
                )
                return RowResult(row.index, outcome, f"The row failed with {type(exc).__name__} {what}.")
            return RowResult(
                row.index,
                result.outcome,
                result.message,
                result.http_status,
                result.response,
                result.appointment,
                result.cancelled,
            )

    progress = Progress(total=len(rows), earlier=len(results))
    for done in results.values():
        progress.add(done.outcome)
    last_line = time.monotonic()
    try:
        with ThreadPoolExecutor(max_workers=max(1, concurrency), thread_name_prefix="care360-batch") as pool:
            queue = list(reversed(todo))
            running: set[Future[RowResult]] = set()
            try:
                while queue or running:
                    while queue and len(running) < concurrency and not stop.is_set():
                        running.add(pool.submit(book, queue.pop()))
                    if stop.is_set() and queue:
                        for row in reversed(queue):
                            results[row.index] = stopped(row)
                            progress.add(results[row.index].outcome)
                        queue.clear()
                    if not running:
                        continue
                    finished, running = wait(running, timeout=progress_every, return_when=FIRST_COMPLETED)
                    for future in finished:
                        result = future.result()
                        results[result.index] = result
                        progress.add(result.outcome)
                    if time.monotonic() - last_line >= progress_every:
                        log.info("%s", progress.line(len(queue) + len(running)))
                        last_line = time.monotonic()
            except BaseException:
                stop.set()  # a timeout or a termination: start nothing more; in-flight rows finish or die
                raise
    finally:
        if journal is not None:
            try:
                journal.flush()  # the outcomes written lazily since each key's last in-flight entry
            except Exception as exc:
                log.warning(
                    "Could not store the batch's last outcomes in the journal (%s): the next try looks "
                    "those rows up once their apply window ends",
                    type(exc).__name__,
                )
    log.info("%s", progress.line(0))
    if journal is not None:
        log.info("Care360 batch: %d journal writes for %d rows", journal.sets, len(todo))
    if fatal:  # a row throttled before the fatal error came is not sent for that error too
        for row in rows:
            if results[row.index].outcome is Outcome.THROTTLED:
                results[row.index] = stopped(row)
    return BatchRun([results[r.index] for r in rows], fatal[0] if fatal else None)


def _throttled(row: Row, wait_for: float) -> RowResult:
    return RowResult(
        row.index,
        Outcome.THROTTLED,
        f"Care360 rate limit (429): the batch stopped before this row (Care360 asked to wait "
        f"{wait_for:.0f} s); nothing was sent for it.",
        http_status=429,
        retry_after=wait_for,
    )
