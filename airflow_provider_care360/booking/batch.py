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
from airflow_provider_care360.exceptions import Care360Error, Care360RateLimitError, Care360ValidationError
from airflow_provider_care360.outcomes import Outcome

__all__ = ["FINAL", "ROWS_PER_KEY", "BatchJournal", "Pacer", "Row", "RowResult", "run_batch"]

#: How many rows' entries one ``task_state_store`` key holds (about 60 bytes a row).
ROWS_PER_KEY = 500
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

    An entry is ``[state, fingerprint, attempt, sent_at, window, unclear_at, outcome]``, with state
    ``"s"`` (sending) or ``"d"`` (done). A write that fails raises: the row's booking is not sent.
    """

    def __init__(
        self,
        store: StateStore,
        *,
        try_number: int | None,
        attempt: int | None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._store = store
        self.try_number = try_number
        self.attempt = attempt
        self._clock = clock
        self._lock = threading.Lock()
        self._keys: dict[int, dict[str, list[Any]]] = {}

    def load(self, indexes: Iterable[int]) -> None:
        """Read the keys these rows live in (only after a first try: try 1 has nothing before it)."""
        if self.try_number == 1:
            return
        for key in sorted({i // ROWS_PER_KEY for i in indexes}):
            raw = self._store.get(f"{KEY_PREFIX}{key}")
            self._keys[key] = dict(raw) if isinstance(raw, Mapping) else {}

    def entry(self, index: int) -> Entry | None:
        with self._lock:
            raw = self._keys.get(index // ROWS_PER_KEY, {}).get(str(index))
        if not isinstance(raw, list) or len(raw) != 7 or raw[0] not in ("s", "d"):
            return None
        state, fp, attempt, sent_at, window, unclear_at, outcome = raw
        return Entry(
            state="sending" if state == "s" else "done",
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

    def write(self, index: int, value: list[Any] | None) -> None:
        """Set (or, with ``None``, drop) one row's entry and store its key; raises if the store does."""
        key = index // ROWS_PER_KEY
        with self._lock:
            rows = dict(self._keys.get(key, {}))
            if value is None:
                rows.pop(str(index), None)
            else:
                rows[str(index)] = value
            self._store.set(f"{KEY_PREFIX}{key}", rows)
            self._keys[key] = rows

    def now(self) -> float:
        return self._clock()


class RowJournal:
    """One row's view of a :class:`BatchJournal`, with the single booking journal's interface."""

    def __init__(self, batch: BatchJournal, index: int, payload: Mapping[str, Any]) -> None:
        self._batch = batch
        self.index = index
        self.fingerprint = fingerprint(payload)
        self.try_number = batch.try_number
        self.attempt = batch.attempt
        self._sending: list[Any] | None = None

    def prior(self) -> Entry | None:
        return self._batch.entry(self.index)

    def is_stale(self, entry: Entry) -> bool:
        return self._batch.is_stale(entry)

    def sending(self, window: float) -> None:
        self._sending = ["s", self.fingerprint, self.attempt, round(self._batch.now(), 3), window, None, None]
        self._batch.write(self.index, self._sending)

    def unclear(self) -> float:
        at = round(self._batch.now(), 3)
        entry = list(self._sending or ["s", self.fingerprint, self.attempt, None, None, None, None])
        entry[5] = at
        self._batch.write(self.index, entry)
        return at

    def done(self, outcome: str) -> None:
        self._batch.write(self.index, ["d", self.fingerprint, self.attempt, None, None, None, outcome])

    def known(self, outcome: str) -> None:
        # Unlike a single booking's, a row's known outcome is kept: a retry after a crash skips it.
        self.done(outcome)

    def forget(self) -> None:
        """Nothing was applied: drop the row's in-flight entry."""
        self._batch.write(self.index, None)

    def settle(self, outcome: Outcome) -> None:
        """Record a row's final outcome (the engine records ``booked`` itself)."""
        self._batch.write(self.index, ["d", self.fingerprint, self.attempt, None, None, None, outcome.value])


class Pacer:
    """
    The rate-limit state every worker shares.

    :param max_rate: ``(n, seconds)``: at most ``n`` bookings started in any ``seconds`` window, so a
        known limit is never hit; ``None`` for no pacing.
    :param clock: the monotonic clock and sleep.
    """

    def __init__(
        self,
        max_rate: tuple[int, float] | None = None,
        *,
        now: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        self.max_rate = max_rate
        self._now = now
        self._sleep = sleep
        self._lock = threading.Lock()
        self._starts: list[float] = []
        self.paused_until = 0.0

    def pause(self, seconds: float) -> None:
        """A 429: no worker starts a request until ``seconds`` from now."""
        with self._lock:
            self.paused_until = max(self.paused_until, self._now() + max(0.0, seconds))

    def pause_left(self) -> float:
        return max(0.0, self.paused_until - self._now())

    def before_booking(self) -> None:
        """Wait for any pause, then for a place within ``max_rate``."""
        while True:
            with self._lock:
                now = self._now()
                wait_for = self.paused_until - now
                if wait_for <= 0 and self.max_rate is not None:
                    n, seconds = self.max_rate
                    self._starts = [t for t in self._starts if t > now - seconds]
                    if len(self._starts) >= n:
                        wait_for = self._starts[0] + seconds - now
                if wait_for <= 0:
                    self._starts.append(now)
                    return
            self._sleep(min(wait_for, 1.0))

    def before_request(self) -> None:
        """Wait for any pause (lookups are not paced, but a 429 pauses them too)."""
        while (left := self.pause_left()) > 0:
            self._sleep(min(left, 1.0))


class PacedHook:
    """A hook whose requests wait for the shared :class:`Pacer`."""

    def __init__(self, hook: BookingHook, pacer: Pacer) -> None:
        self._hook = hook
        self._pacer = pacer

    @property
    def request_window(self) -> float:
        return self._hook.request_window

    def appointments_at(self, *, email: str, start_time: str) -> Any:
        self._pacer.before_request()
        return self._hook.appointments_at(email=email, start_time=start_time)

    def send_booking(self, payload: dict[str, Any]) -> dict[str, Any]:
        self._pacer.before_booking()
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
    started: float = field(default_factory=time.monotonic)
    counts: dict[str, int] = field(default_factory=dict)

    def add(self, outcome: Outcome) -> None:
        self.counts[outcome.value] = self.counts.get(outcome.value, 0) + 1

    def line(self, left: int) -> str:
        done = self.total - left
        elapsed = max(1e-9, time.monotonic() - self.started)
        rate = done / elapsed
        eta = f"{left / rate:.0f} s" if rate > 0 else "unknown"
        counts = ", ".join(f"{k} {v}" for k, v in sorted(self.counts.items())) or "none yet"
        return (
            f"Care360 batch: {done}/{self.total} rows done ({counts}); {left} left; "
            f"{rate:.1f} rows/s; ETA {eta}"
        )


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
) -> list[RowResult]:
    """
    Book ``rows``; return one result per row, in row order.

    A row the journal knows is settled (this attempt, the same body) is neither looked up nor sent.
    A 429 pauses every worker; a pause longer than ``max_sleep`` stops the batch: the rows not yet
    started are ``throttled``, with the named wait as their ``retry_after``. Rows whose requests were
    in flight finish first, so no row is left half done by the stop.

    :param hook_for: makes a hook for one worker thread (each thread its own HTTP session).
    """
    pacer = Pacer(max_rate)
    results: dict[int, RowResult] = {}
    todo: list[Row] = []
    if journal is not None:
        journal.load(r.index for r in rows)
    for row in rows:
        settled = journal.settled(row.index, fingerprint(row.payload)) if journal else None
        if settled is not None:
            results[row.index] = RowResult(
                row.index, settled, f"Settled by an earlier try of this task ({settled}); nothing was sent."
            )
        else:
            todo.append(row)
    if results:
        log.info("%d of %d rows were settled by an earlier try: not looked up again", len(results), len(rows))

    local = threading.local()
    stop = threading.Event()
    longest_pause = [0.0]

    def book(row: Row) -> RowResult:
        if not hasattr(local, "hook"):
            local.hook = PacedHook(hook_for(), pacer)
        while True:
            if stop.is_set():
                return _throttled(row, pacer.pause_left() or longest_pause[0])
            row_journal = RowJournal(journal, row.index, row.payload) if journal else None
            engine = BookingEngine(
                local.hook, row.payload, options, row_journal, log, past_start=row.past_start, clock=clock
            )
            try:
                result = engine.run()
            except Care360RateLimitError as exc:
                wait_for = exc.retry_after if exc.retry_after is not None else 1.0
                longest_pause[0] = max(longest_pause[0], wait_for)
                if wait_for > max_sleep:
                    stop.set()
                    pacer.pause(wait_for)
                    return _throttled(row, wait_for)
                pacer.pause(wait_for)
                log.info("Care360 rate limit (429): the batch pauses %.1f s", wait_for)
                continue
            except Care360Error as exc:
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
            return RowResult(
                row.index,
                result.outcome,
                result.message,
                result.http_status,
                result.response,
                result.appointment,
                result.cancelled,
            )

    progress = Progress(total=len(rows))
    for done in results.values():
        progress.add(done.outcome)
    last_line = time.monotonic()
    with ThreadPoolExecutor(max_workers=max(1, concurrency), thread_name_prefix="care360-batch") as pool:
        queue = list(reversed(todo))
        running: set[Future[RowResult]] = set()
        try:
            while queue or running:
                while queue and len(running) < concurrency and not stop.is_set():
                    running.add(pool.submit(book, queue.pop()))
                if stop.is_set() and queue:
                    for row in reversed(queue):
                        results[row.index] = _throttled(row, pacer.pause_left() or longest_pause[0])
                        progress.add(Outcome.THROTTLED)
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
    log.info("%s", progress.line(0))
    return [results[r.index] for r in rows]


def _throttled(row: Row, wait_for: float) -> RowResult:
    return RowResult(
        row.index,
        Outcome.THROTTLED,
        f"Care360 rate limit (429): the batch stopped before this row (Care360 asked to wait "
        f"{wait_for:.0f} s); nothing was sent for it.",
        http_status=429,
        retry_after=wait_for,
    )
