"""The simulator's command line: ``care360-simulator`` or ``python -m airflow_provider_care360.testing``."""

from __future__ import annotations

import argparse
import signal
import threading
from zoneinfo import ZoneInfo

from airflow_provider_care360.testing.server import ADMIN, Care360Simulator

__all__ = ["main"]


def _whole(text: str, low: int, high: int) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
    if not low <= value <= high:
        raise argparse.ArgumentTypeError(f"{value} is not between {low} and {high}")
    return value


def _slot_minutes(text: str) -> int:
    return _whole(text, 1, 1440)


def _count(text: str) -> int:
    return _whole(text, 0, 10**9)


def _seconds(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number of seconds") from None
    if not 0 < value < 1e9:
        raise argparse.ArgumentTypeError(f"{text} is not a number of seconds above 0")
    return value


def _delay(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number of seconds") from None
    if not 0 <= value < 1e9:  # also refuses nan
        raise argparse.ArgumentTypeError(f"{text} is not a number of seconds of at least 0")
    return value


def _zone(text: str) -> str:
    try:
        ZoneInfo(text)
    except Exception:
        raise argparse.ArgumentTypeError(f"{text!r} is not an IANA time zone") from None
    return text


def main(argv: list[str] | None = None) -> int:
    """Command line: run the simulator until interrupted (SIGINT or SIGTERM)."""
    import os

    parser = argparse.ArgumentParser(
        prog="care360-simulator", description="Run a local Care360 API simulator on loopback."
    )
    parser.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1)")
    parser.add_argument("--port", type=int, default=8360, help="port; 0 picks a free one (default 8360)")
    parser.add_argument(
        "--api-key",
        default=os.environ.get("CARE360_SIMULATOR_API_KEY"),
        help="the accepted API key (default: $CARE360_SIMULATOR_API_KEY)",
    )
    parser.add_argument(
        "--rate-limit", type=_count, default=None, help="booking requests per window (0: every one is a 429)"
    )
    parser.add_argument(
        "--rate-window", type=_seconds, default=60.0, help="rate-limit window in seconds (> 0)"
    )
    parser.add_argument(
        "--quota",
        type=_count,
        default=None,
        help="bookings per quota window, a second tier (past it: a 429 with X-RateLimit-* only)",
    )
    parser.add_argument(
        "--quota-window", type=_seconds, default=86400.0, help="quota window in seconds (default a day)"
    )
    parser.add_argument(
        "--latency", type=_delay, default=0.0, help="seconds each API request waits before its answer"
    )
    parser.add_argument(
        "--booking-latency", type=_delay, default=None, help="the booking's latency (default: --latency)"
    )
    parser.add_argument(
        "--lookup-latency", type=_delay, default=None, help="the lookup's latency (default: --latency)"
    )
    parser.add_argument(
        "--lookup-lag",
        type=_delay,
        default=0.0,
        help="seconds before a booking shows in Fetch Appointments (default 0)",
    )
    parser.add_argument("--no-retry-after", action="store_true", help="send 429s without Retry-After")
    parser.add_argument("--rate-limit-headers", action="store_true", help="send X-RateLimit-* headers")
    parser.add_argument(
        "--slot-minutes",
        type=_slot_minutes,
        default=30,
        help="slot length in minutes, 1 to 1440 (default 30)",
    )
    parser.add_argument(
        "--host-timezone",
        type=_zone,
        default="UTC",
        help="IANA zone whose midnight slots are counted from (default UTC)",
    )
    parser.add_argument(
        "--admin-token",
        default=os.environ.get("CARE360_SIMULATOR_ADMIN_TOKEN"),
        help="let any client that sends it in X-Simulator-Admin-Token use /_simulator "
        "(default: $CARE360_SIMULATOR_ADMIN_TOKEN; without one, loopback clients only)",
    )
    parser.add_argument(
        "--event-type",
        action="append",
        dest="event_types",
        help="an event type id that exists (repeatable; default: any)",
    )
    parser.add_argument("--port-file", help="write the bound port to this file once listening")
    args = parser.parse_args(argv)
    if not args.api_key:
        parser.error("--api-key (or $CARE360_SIMULATOR_API_KEY) is required")

    sim = Care360Simulator(
        args.api_key,
        host=args.host,
        port=args.port,
        rate_limit=args.rate_limit,
        rate_window=args.rate_window,
        send_retry_after=not args.no_retry_after,
        rate_limit_headers=args.rate_limit_headers,
        slot_minutes=args.slot_minutes,
        event_types=set(args.event_types) if args.event_types else None,
        host_timezone=args.host_timezone,
        admin_token=args.admin_token,
        quota=args.quota,
        quota_window=args.quota_window,
        latency=args.latency,
        booking_latency=args.booking_latency,
        lookup_latency=args.lookup_latency,
        lookup_lag=args.lookup_lag,
    ).start()
    stop = threading.Event()
    for signum in (signal.SIGINT, signal.SIGTERM):
        signal.signal(signum, lambda *_: stop.set())
    if args.port_file:
        with open(args.port_file + ".tmp", "w") as fh:
            fh.write(str(sim.port))
        os.replace(args.port_file + ".tmp", args.port_file)
    print(f"Care360 simulator listening on {sim.url} (Ctrl-C to stop)", flush=True)
    if not args.admin_token:
        print(f"Admin endpoints ({ADMIN}) answer loopback clients only.", flush=True)
    stop.wait()
    sim.stop()
    print(f"Care360 simulator stopped; {sim.booked_count()} booking(s) accepted.", flush=True)
    return 0
