"""
Where our users run the provider: a real Airflow 3.3 deployment with the CeleryExecutor, PostgreSQL as
the metadata database and Redis as the broker, two workers of two slots each, on loopback.

The module starts a throwaway PostgreSQL cluster (Debian's ``postgresql``; as the ``postgres`` user
when the tests run as root, since PostgreSQL refuses root), ``redis-server`` (no persistence), the API
server, scheduler, DAG processor, triggerer, and two ``airflow celery worker`` processes, each in a
session of its own. Airflow 3.3 puts every task process in a process group of its own
(``supervisor.py``: ``os.setpgid(0, 0)``), so a worker's process group does not hold its tasks; its
session does. Losing or freezing "a worker" here signals every process of its session: the Celery
worker, its pool processes, their supervisors and their task processes, as a lost node or a paused VM
would. The simulator runs with one-on-one slots off, so a second booking of a row would show as a
second appointment. Every scenario is counted from the simulator's ledger:

1. A mapped run of single bookings and a batch task, at once across both workers: every row booked
   once, every record accounted for.
2. One worker killed (SIGKILL, its whole session) while it runs bookings of both kinds, with the
   bookings applied by Care360 only after the retries first look: the lost tries are retried on the
   other worker after the heartbeat timeout, wait out the apply window, and every row ends booked
   exactly once (one booking request per row).
3. A worker frozen (SIGSTOP) mid-batch, its try's four threads each waiting for a lookup's answer,
   until the heartbeat times out and the next try runs on the other worker and books those rows,
   then woken (SIGCONT): every row ends booked once, the woken process sends no booking request after
   its successor's first request (each request is traced to its process by its client port), and the
   execution API refuses every call of the woken try (its task instance id is gone: the retry has a
   new one), its journal writes included. The test prints what the woken try did.
4. Clearing the finished batch run and mapped run of scenario 1: nothing is booked again.

Skipped where Airflow is older than 3.3, and where PostgreSQL, ``redis-server`` or the Python
packages of ``.ci/celery-deps.txt`` (the Celery provider, ``psycopg2``, ``asyncpg``, ``redis``) are
missing, unless ``CARE360_CELERY_TESTS=required`` (as in CI), where a missing one fails the tests
instead. ``CARE360_CELERY_MAPPED_ROWS`` and ``CARE360_CELERY_BATCH_ROWS`` scale scenarios 1 and 4
down for a quick local loop (defaults 100 and 500). Everything is stopped by session at the end, also
when a test fails, and the module checks that no process of any session it started is left.
"""

from __future__ import annotations

import importlib.util
import json
import os
import re
import secrets
import shutil
import signal
import socket
import subprocess
import tempfile
import time
import urllib.error
import urllib.request
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from airflow_provider_care360.testing import Care360Simulator, Fault
from support import ROOT, airflow_cli, iso, next_slot

try:
    from airflow_provider_care360.version_compat import AIRFLOW_V_3_3_PLUS
except ImportError:  # pragma: no cover
    AIRFLOW_V_3_3_PLUS = False

pytestmark = [
    pytest.mark.integration,
    pytest.mark.skipif(
        not AIRFLOW_V_3_3_PLUS, reason="the CeleryExecutor deployment test targets Airflow 3.3"
    ),
]

REQUIRED = os.environ.get("CARE360_CELERY_TESTS") == "required"
DAG_FILE = ROOT / "tests" / "deployment_dags" / "care360_celery_dags.py"
SINGLE, BATCH = "care360_c_single", "care360_c_batch"
WORKERS = ("worker1", "worker2")
HEARTBEAT_TIMEOUT = 10  # seconds without a heartbeat before the scheduler fails the try
CONNECT_TIMEOUT, READ_TIMEOUT = 2, 10  # the connection's extra.timeout: a request's window is 12 s
LONG_CONN = "care360_c_long"  # the same simulator with a 60 s read timeout (scenario 3)
MAPPED_ROWS = int(os.environ.get("CARE360_CELERY_MAPPED_ROWS", "100"))
BATCH_ROWS = int(os.environ.get("CARE360_CELERY_BATCH_ROWS", "500"))


def _dag_constant(name: str) -> Any:
    """A constant of the DAG file (the apply window its operators use)."""
    spec = importlib.util.spec_from_file_location("care360_celery_dags", DAG_FILE)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return getattr(module, name)


# -- prerequisites ------------------------------------------------------------------------------


def _postgres_bin() -> Path | None:
    """The directory holding PostgreSQL's ``initdb`` and ``postgres`` (Debian keeps them off PATH)."""
    candidates: list[Path] = []
    if found := shutil.which("initdb"):
        candidates.append(Path(found).resolve().parent)

    def version(path: Path) -> tuple[int, ...]:
        return tuple(int(p) for p in re.findall(r"\d+", path.parent.name)) or (0,)

    candidates += sorted(Path("/usr/lib/postgresql").glob("*/bin"), key=version, reverse=True)
    for folder in candidates:
        if all(os.access(folder / name, os.X_OK) for name in ("initdb", "postgres")):
            return folder
    return None


def _missing() -> list[str]:
    problems = []
    if _postgres_bin() is None:
        problems.append("PostgreSQL's initdb and postgres (apt-get install postgresql)")
    if shutil.which("redis-server") is None:
        problems.append("redis-server (apt-get install redis-server)")
    packages = [
        package
        for module, package in (
            ("airflow.providers.celery", "apache-airflow-providers-celery"),
            ("psycopg2", "psycopg2-binary"),
            ("asyncpg", "asyncpg"),
            ("redis", "redis"),
        )
        if importlib.util.find_spec(module) is None
    ]
    if packages:
        problems.append(f"the Python packages {', '.join(packages)} (pip install -r .ci/celery-deps.txt)")
    else:
        try:
            import airflow.providers.celery.executors.celery_executor_utils  # noqa: F401
        except Exception as exc:  # celery 5.7 removed celery.backends.database.retry, which it imports
            problems.append(f"a Celery provider that imports ({exc!r}; celery<5.7 is needed)")
    return problems


# -- processes ----------------------------------------------------------------------------------


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def _session_pids(sid: int) -> list[int]:
    """The live (not zombie) processes of a session: found by session id, never by name."""
    import psutil

    pids = []
    for pid in psutil.pids():
        try:
            if os.getsid(pid) == sid and psutil.Process(pid).status() != psutil.STATUS_ZOMBIE:
                pids.append(pid)
        except (ProcessLookupError, PermissionError, psutil.NoSuchProcess):
            continue
    return pids


class Sessions:
    """Every process the module starts, each the leader of a session of its own."""

    def __init__(self, logs: Path) -> None:
        self.logs = logs
        self.procs: dict[str, subprocess.Popen[bytes]] = {}
        self.lost: list[subprocess.Popen[bytes]] = []  # killed on purpose, reaped, kept for the check

    def start(
        self, name: str, argv: list[str], env: dict[str, str], **kwargs: Any
    ) -> subprocess.Popen[bytes]:
        with (self.logs / f"{name}.log").open("ab") as out:
            proc = subprocess.Popen(
                argv, env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True, **kwargs
            )
        self.procs[name] = proc
        return proc

    def pids(self, name: str) -> list[int]:
        return _session_pids(self.procs[name].pid)

    def signal(self, name: str, sig: signal.Signals) -> list[int]:
        """Send ``sig`` to every process of the session ``name`` leads; returns their PIDs."""
        pids = self.pids(name)
        for pid in pids:
            try:
                os.kill(pid, sig)
            except ProcessLookupError:
                pass
        return pids

    def lose(self, name: str) -> list[int]:
        """SIGKILL a whole session (a lost node), reap its leader, forget it."""
        pids = self.signal(name, signal.SIGKILL)
        proc = self.procs.pop(name)
        proc.wait(timeout=30)
        deadline = time.monotonic() + 30
        while _session_pids(proc.pid) and time.monotonic() < deadline:
            time.sleep(0.2)
        self.lost.append(proc)
        return pids

    def session_of(self, pid: int) -> str | None:
        try:
            sid = os.getsid(pid)
        except ProcessLookupError:
            return None
        return next((name for name, proc in self.procs.items() if proc.pid == sid), None)

    def check_alive(self, what: str) -> None:
        for name, proc in self.procs.items():
            if proc.poll() is not None:
                raise AssertionError(f"{name} exited ({proc.returncode}) while waiting for {what}")

    def stop_all(self, last: tuple[str, ...]) -> list[str]:
        """SIGTERM every session (those in ``last`` after the rest), then SIGKILL what is left."""
        order = [n for n in self.procs if n not in last] + [n for n in last if n in self.procs]
        for name in order:
            if name == "postgres":
                # SIGINT to the postmaster alone: a fast shutdown that ends its backends itself.
                if self.procs[name].poll() is None:
                    self.procs[name].send_signal(signal.SIGINT)
            else:
                self.signal(name, signal.SIGTERM)
            self._wait_session(name, 45)
        leftovers = []
        for name, proc in [*self.procs.items(), *(("lost", p) for p in self.lost)]:
            left = _session_pids(proc.pid)
            if left:
                leftovers.append(f"{name}: {left}")
                for pid in left:
                    try:
                        os.kill(pid, signal.SIGKILL)
                    except ProcessLookupError:
                        pass
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                leftovers.append(f"{name}: leader {proc.pid} did not exit")
        return leftovers

    def _wait_session(self, name: str, timeout: float) -> None:
        proc = self.procs[name]
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            proc.poll()
            if not _session_pids(proc.pid):
                return
            time.sleep(0.3)
        self.signal(name, signal.SIGKILL)
        self._reap(proc)

    @staticmethod
    def _reap(proc: subprocess.Popen[bytes]) -> None:
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            pass


def _call(url: str, method: str = "GET", body: Any = None) -> Any:
    data = json.dumps(body).encode() if body is not None else None
    req = urllib.request.Request(url, data=data, method=method, headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=60) as response:
        return json.loads(response.read())


def _pid_of_client(port: int, server_port: int) -> int | None:
    """The process holding the client end of a loopback connection to ``server_port``."""
    import psutil

    for conn in psutil.net_connections(kind="tcp"):
        if (
            conn.laddr
            and conn.laddr.port == port
            and conn.raddr
            and conn.raddr.port == server_port
            and conn.pid
            and conn.pid != os.getpid()
        ):
            return int(conn.pid)
    return None


class Attribution:
    """
    While on, each request the simulator records carries ``pid``, the process that sent it (looked up
    from the client port while the request is being answered: the connection is open then), and
    ``worker``, the session that process belongs to (``None`` for none of ours).
    """

    def __init__(self, sim: Care360Simulator, session_of: Callable[[int], str | None]) -> None:
        self.on = False
        original = sim._record

        def record(entry: dict[str, Any]) -> None:
            if self.on:
                pid = _pid_of_client(int(entry["client"][1]), sim.port)
                entry["pid"], entry["worker"] = pid, session_of(pid) if pid else None
            original(entry)

        sim._record = record  # type: ignore[method-assign]


# -- the deployment -----------------------------------------------------------------------------


@dataclass
class Deployment:
    api: str
    sim: Care360Simulator
    sessions: Sessions
    logs: Path
    home: Path
    env: dict[str, str]
    attribution: Attribution
    finished_runs: dict[str, str] = field(default_factory=dict)

    # REST

    def wait(self, what: str, probe: Callable[[], Any], timeout: float, every: float = 0.5) -> Any:
        deadline = time.monotonic() + timeout
        while True:
            self.sessions.check_alive(what)
            try:
                result = probe()
                if result:
                    return result
            except (urllib.error.URLError, ConnectionError, KeyError, TimeoutError):
                pass
            if time.monotonic() > deadline:
                raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}\n{self.tail()}")
            time.sleep(every)

    def trigger(self, dag_id: str, conf: dict[str, Any]) -> str:
        run = _call(f"{self.api}/api/v2/dags/{dag_id}/dagRuns", "POST", {"logical_date": None, "conf": conf})
        return str(run["dag_run_id"])

    def state(self, dag_id: str, run_id: str) -> str:
        return str(_call(f"{self.api}/api/v2/dags/{dag_id}/dagRuns/{run_id}")["state"])

    def finished(self, dag_id: str, run_id: str, timeout: float) -> str:
        return str(
            self.wait(
                f"{dag_id} {run_id} to finish",
                lambda: (s := self.state(dag_id, run_id)) in ("success", "failed") and s,
                timeout,
                every=2.0,
            )
        )

    def task(self, dag_id: str, run_id: str, task_id: str = "book", map_index: int = -1) -> dict[str, Any]:
        suffix = f"/{map_index}" if map_index >= 0 else ""
        return dict(
            _call(f"{self.api}/api/v2/dags/{dag_id}/dagRuns/{run_id}/taskInstances/{task_id}{suffix}")
        )

    def tasks(self, dag_id: str, run_id: str, task_id: str = "book") -> list[dict[str, Any]]:
        url = f"{self.api}/api/v2/dags/{dag_id}/dagRuns/{run_id}/taskInstances?task_id={task_id}&limit=1000"
        return [t for t in _call(url)["task_instances"] if t["task_id"] == task_id]

    def xcom(self, dag_id: str, run_id: str, key: str, map_index: int = -1, task_id: str = "book") -> Any:
        url = (
            f"{self.api}/api/v2/dags/{dag_id}/dagRuns/{run_id}/taskInstances/{task_id}/xcomEntries/{key}"
            f"?map_index={map_index}"
        )
        return _call(url)["value"]

    def outcome(self, dag_id: str, run_id: str, map_index: int = -1) -> Any:
        """A single booking's record: its return value if it succeeded, else ``care360_outcome``."""
        try:
            return self.xcom(dag_id, run_id, "return_value", map_index)
        except urllib.error.HTTPError as exc:
            if exc.code != 404:
                raise
            return self.xcom(dag_id, run_id, "care360_outcome", map_index)

    def clear(self, dag_id: str, run_id: str) -> None:
        _call(f"{self.api}/api/v2/dags/{dag_id}/dagRuns/{run_id}/clear", "POST", {"dry_run": False})

    # the ledger

    def booked(self, prefix: str) -> Counter[str]:
        """How many appointments the simulator holds per email starting with ``prefix``."""
        return Counter(a["email"] for a in self.sim.appointments if a["email"].startswith(prefix))

    def booking_requests(self, prefix: str) -> list[dict[str, Any]]:
        return [
            r
            for r in self.sim.booking_requests
            if isinstance(r["body"], dict) and str(r["body"].get("email", "")).startswith(prefix)
        ]

    def requests(self, prefix: str) -> list[dict[str, Any]]:
        """Bookings and lookups for emails starting with ``prefix``, oldest first."""
        out = []
        for r in self.sim.requests:
            email = (r["body"] or {}).get("email") if isinstance(r["body"], dict) else None
            email = email or (r.get("query") or {}).get("user_email", [None])[0]
            if isinstance(email, str) and email.startswith(prefix):
                out.append({**r, "email": email})
        return out

    # workers

    def start_worker(self, name: str) -> None:
        log = self.logs / f"{name}.log"
        offset = log.stat().st_size if log.exists() else 0
        self.sessions.start(
            name,
            [
                airflow_cli(),
                "celery",
                "worker",
                "-H",
                f"{name}@%h",
                "-c",
                "2",
                "-q",
                "default",
                "--skip-serve-logs",
                "--without-mingle",
                "--without-gossip",
            ],
            self.env,
        )
        self.wait(
            f"{name} to be ready",
            lambda: b" ready." in log.read_bytes()[offset:],
            180,
        )

    def ensure_workers(self) -> None:
        """Both workers running: one an earlier scenario lost (and failed before restarting) starts again."""
        for name in WORKERS:
            if name not in self.sessions.procs:
                self.start_worker(name)

    def workloads_per_worker(self, dag_id: str, run_id: str) -> dict[str, int]:
        """How many task workloads of a run each worker's log says it executed."""
        counts = {}
        for name in WORKERS:
            text = (self.logs / f"{name}.log").read_text(errors="replace")
            counts[name] = sum(
                1
                for line in text.splitlines()
                if "Executing workload in Celery" in line and dag_id in line and run_id in line
            )
        return counts

    def task_log(self, dag_id: str, run_id: str, attempt: int, map_index: int = -1) -> str:
        folder = self.home / "logs" / f"dag_id={dag_id}" / f"run_id={run_id}" / "task_id=book"
        if map_index >= 0:
            folder = folder / f"map_index={map_index}"
        path = folder / f"attempt={attempt}.log"
        return path.read_text(errors="replace") if path.exists() else ""

    def execution_api_calls(self, ti_id: str, since: float) -> Counter[tuple[str, int]]:
        """The execution API's answers to calls for task instance ``ti_id`` since ``since``, by kind."""
        calls: Counter[tuple[str, int]] = Counter()
        for line in (self.logs / "api-server.log").read_text(errors="replace").splitlines():
            if ti_id not in line or "http.access" not in line:
                continue
            stamp, path = line.split(" ", 1)[0], re.search(r"path=(\S+)", line)
            status = re.search(r"status_code=(\d+)", line)
            try:
                at = datetime.fromisoformat(stamp.replace("Z", "+00:00")).timestamp()
            except ValueError:
                continue
            if at >= since - 0.5 and path and status:
                kind = path.group(1).split(ti_id, 1)[-1].strip("/").split("/")[0] or "?"
                if "/store/" in path.group(1):
                    kind = "store (journal)"
                method = re.search(r"method=(\w+)", line)
                calls[(f"{method.group(1) if method else '?'} {kind}", int(status.group(1)))] += 1
        return calls

    def tail(self) -> str:
        parts = []
        for name in ("scheduler", *WORKERS):
            path = self.logs / f"{name}.log"
            if path.exists():
                parts.append(f"--- {name}.log ---\n" + path.read_text(errors="replace")[-1500:])
        return "\n".join(parts)


def _airflow(env: dict[str, str], *args: str) -> None:
    done = subprocess.run([airflow_cli(), *args], env=env, capture_output=True, timeout=600)
    assert done.returncode == 0, (
        f"airflow {' '.join(args)} failed:\n{done.stdout.decode()[-3000:]}\n{done.stderr.decode()[-3000:]}"
    )


def _start_postgres(sessions: Sessions, root: Path, port: int) -> str:
    """A throwaway cluster, as the ``postgres`` user when we are root; returns the database URL host part."""
    import psycopg2

    bindir = _postgres_bin()
    assert bindir is not None
    as_user: dict[str, Any] = {}
    if os.geteuid() == 0:
        import pwd

        pw = pwd.getpwnam("postgres")
        os.chown(root, pw.pw_uid, pw.pw_gid)
        as_user = {"user": pw.pw_uid, "group": pw.pw_gid, "extra_groups": []}
    data, sockets = root / "data", root / "sockets"
    env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "LC_ALL": "C.UTF-8", "HOME": str(root)}
    subprocess.run(
        [
            str(bindir / "initdb"),
            "-D",
            str(data),
            "-U",
            "postgres",
            "--auth=trust",
            "-E",
            "UTF8",
            "--no-sync",
        ],
        cwd=root,
        env=env,
        check=True,
        capture_output=True,
        timeout=300,
        **as_user,
    )
    subprocess.run(["mkdir", "-p", str(sockets)], cwd=root, env=env, check=True, **as_user)
    sessions.start(
        "postgres",
        [
            str(bindir / "postgres"),
            "-D",
            str(data),
            "-p",
            str(port),
            "-k",
            str(sockets),
            "-c",
            "listen_addresses=127.0.0.1",
            "-c",
            "max_connections=300",
            "-c",
            "fsync=off",
            "-c",
            "synchronous_commit=off",
            "-c",
            "full_page_writes=off",
            "-c",
            "shared_buffers=64MB",
        ],
        env,
        cwd=root,
        **as_user,
    )
    deadline = time.monotonic() + 60
    while True:
        sessions.check_alive("PostgreSQL")
        try:
            conn = psycopg2.connect(
                host="127.0.0.1", port=port, user="postgres", dbname="postgres", connect_timeout=2
            )
            break
        except psycopg2.OperationalError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.3)
    conn.autocommit = True
    with conn.cursor() as cursor:
        cursor.execute("CREATE DATABASE airflow")
    conn.close()
    return f"postgres@127.0.0.1:{port}/airflow"


def _start_redis(sessions: Sessions, root: Path, port: int) -> None:
    import redis

    sessions.start(
        "redis",
        [
            "redis-server",
            "--port",
            str(port),
            "--bind",
            "127.0.0.1",
            "--save",
            "",
            "--appendonly",
            "no",
            "--dir",
            str(root),
            "--daemonize",
            "no",
        ],
        {"PATH": os.environ.get("PATH", "/usr/bin:/bin")},
    )
    deadline = time.monotonic() + 30
    while True:
        sessions.check_alive("Redis")
        try:
            if redis.Redis(host="127.0.0.1", port=port, socket_timeout=2).ping():
                return
        except redis.exceptions.ConnectionError:
            if time.monotonic() > deadline:
                raise
        time.sleep(0.2)


@pytest.fixture(scope="module")
def deployment(
    tmp_path_factory: pytest.TempPathFactory, request: pytest.FixtureRequest
) -> Iterator[Deployment]:
    problems = _missing()
    if problems:
        message = "the CeleryExecutor deployment test needs " + "; ".join(problems)
        if REQUIRED:
            pytest.fail(message)
        pytest.skip(message)
    reporter = request.config.pluginmanager.get_plugin("terminalreporter")
    began = time.monotonic()
    tmp = tmp_path_factory.mktemp("celery")
    home, logs, dags = tmp / "home", tmp / "logs", tmp / "dags"
    for folder in (logs, dags):
        folder.mkdir()
    shutil.copy(DAG_FILE, dags)
    # Not under pytest's tmp: its folders are 0700 and root's, which the postgres user cannot enter.
    pg_root = Path(tempfile.mkdtemp(prefix="care360-pg-"))
    sessions = Sessions(logs)
    port = _free_port()
    api = f"http://127.0.0.1:{port}"
    try:
        with Care360Simulator(api_key="celery-" + secrets.token_hex(6)) as sim:
            sim.one_on_one = False  # a second booking of a slot would show as a second appointment
            attribution = Attribution(sim, sessions.session_of)
            db = _start_postgres(sessions, pg_root, _free_port())
            redis_port = _free_port()
            _start_redis(sessions, tmp, redis_port)
            env = {
                **{k: v for k, v in os.environ.items() if not k.startswith(("AIRFLOW__", "AIRFLOW_CONN_"))},
                "AIRFLOW_HOME": str(home),
                "AIRFLOW__CORE__DAGS_FOLDER": str(dags),
                "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
                "AIRFLOW__CORE__EXECUTOR": "CeleryExecutor",
                "AIRFLOW__CORE__PARALLELISM": "16",
                "AIRFLOW__CORE__EXECUTION_API_SERVER_URL": f"{api}/execution/",
                "AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_ALL_ADMINS": "True",
                "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN": f"postgresql+psycopg2://{db}",
                "AIRFLOW__CELERY__BROKER_URL": f"redis://127.0.0.1:{redis_port}/0",
                # SQLAlchemy 2.1 reads a bare postgresql:// as psycopg 3: name the driver.
                "AIRFLOW__CELERY__RESULT_BACKEND": f"db+postgresql+psycopg2://{db}",
                "AIRFLOW__CELERY__WORKER_CONCURRENCY": "2",
                "AIRFLOW__CELERY__OPERATION_TIMEOUT": "10",
                "AIRFLOW__CELERY_BROKER_TRANSPORT_OPTIONS__VISIBILITY_TIMEOUT": "21600",
                "AIRFLOW__LOGGING__TRIGGER_LOG_SERVER_PORT": str(_free_port()),
                "AIRFLOW__LOGGING__WORKER_LOG_SERVER_PORT": str(_free_port()),
                "AIRFLOW__API_AUTH__JWT_SECRET": secrets.token_hex(32),
                "AIRFLOW__API__WORKERS": "1",
                "AIRFLOW__DAG_PROCESSOR__REFRESH_INTERVAL": "5",
                "AIRFLOW__SCHEDULER__SCHEDULER_HEARTBEAT_SEC": "1",
                "AIRFLOW__SCHEDULER__TASK_INSTANCE_HEARTBEAT_TIMEOUT": str(HEARTBEAT_TIMEOUT),
                "AIRFLOW__SCHEDULER__TASK_INSTANCE_HEARTBEAT_TIMEOUT_DETECTION_INTERVAL": "2",
                **sim.airflow_connection_env(timeout=[CONNECT_TIMEOUT, READ_TIMEOUT]),
                **sim.airflow_connection_env(LONG_CONN, timeout=[CONNECT_TIMEOUT, 60]),
            }
            _airflow(env, "db", "migrate")
            migrated = time.monotonic()
            for name, command in (
                ("api-server", ["api-server", "--host", "127.0.0.1", "--port", str(port)]),
                ("scheduler", ["scheduler"]),
                ("dag-processor", ["dag-processor"]),
                ("triggerer", ["triggerer"]),
            ):
                sessions.start(name, [airflow_cli(), *command], env)
            deployment = Deployment(api, sim, sessions, logs, home, env, attribution)
            deployment.wait("the API server", lambda: _call(f"{api}/api/v2/monitor/health"), 180)
            for name in WORKERS:
                deployment.start_worker(name)
            for dag_id in (SINGLE, BATCH):
                deployment.wait(
                    f"{dag_id} to be parsed", lambda d=dag_id: _call(f"{api}/api/v2/dags/{d}")["dag_id"], 180
                )
                _call(f"{api}/api/v2/dags/{dag_id}", "PATCH", {"is_paused": False})
            deployment.wait(
                "the triggerer to be healthy",
                lambda: _call(f"{api}/api/v2/monitor/health")["triggerer"]["status"] == "healthy",
                120,
            )
            if reporter:
                reporter.write_line(
                    f"\ncelery deployment: db migrate {migrated - began:.0f} s, "
                    f"ready {time.monotonic() - began:.0f} s after the start; logs in {logs}"
                )
            yield deployment
    finally:
        leftovers = sessions.stop_all(last=("redis", "postgres"))
        shutil.rmtree(pg_root, ignore_errors=True)
        if reporter:
            reporter.write_line(f"\ncelery deployment: the module took {time.monotonic() - began:.0f} s")
    assert leftovers == [], f"processes left behind: {leftovers}"


# -- helpers for the scenarios ------------------------------------------------------------------


def _rows(prefix: str, count: int, days: int, key: str) -> list[dict[str, Any]]:
    """``count`` rows, each invitee in a half-hour slot of its own from ``days`` from now."""
    start = next_slot(days=days)
    return [
        {key: f"{prefix}{i:03d}@example.com", "start_time": iso(start + timedelta(minutes=30 * i))}
        for i in range(count)
    ]


def _emails(rows: list[dict[str, Any]]) -> list[str]:
    return [r.get("email") or r["invitee_email"] for r in rows]


def _assert_each_once(deployment: Deployment, prefix: str, rows: list[dict[str, Any]]) -> None:
    assert deployment.sim.wait_pending(timeout=120), "late bookings still pending"
    booked = deployment.booked(prefix)
    twice = {e: n for e, n in booked.items() if n > 1}
    missing = [e for e in _emails(rows) if e not in booked]
    assert not twice and not missing, f"booked more than once: {twice}; never booked: {missing}"
    assert sorted(booked) == sorted(_emails(rows))


def _batch_records(deployment: Deployment, run_id: str) -> list[dict[str, Any]]:
    return list(deployment.xcom(BATCH, run_id, "care360_outcomes"))


# -- the scenarios ------------------------------------------------------------------------------


def test_mapped_and_batch_at_once_across_both_workers_book_every_row_once(deployment: Deployment) -> None:
    single_rows = _rows("s1-single-", MAPPED_ROWS, days=20, key="invitee_email")
    batch_rows = _rows("s1-batch-", BATCH_ROWS, days=40, key="email")
    began = time.monotonic()
    single_run = deployment.trigger(SINGLE, {"rows": single_rows})
    batch_run = deployment.trigger(BATCH, {"rows": batch_rows})
    assert deployment.finished(BATCH, batch_run, timeout=900) == "success", deployment.tail()
    batch_done = time.monotonic() - began
    assert deployment.finished(SINGLE, single_run, timeout=900) == "success", deployment.tail()
    took = time.monotonic() - began

    _assert_each_once(deployment, "s1-single-", single_rows)
    _assert_each_once(deployment, "s1-batch-", batch_rows)
    # Every record accounted for: the batch's summary and its per-row records...
    summary = deployment.xcom(BATCH, batch_run, "return_value")
    assert summary["rows"] == BATCH_ROWS
    assert set(summary["counts"]) <= {"booked", "already_booked"}, summary["counts"]
    assert sum(summary["counts"].values()) == BATCH_ROWS
    records = _batch_records(deployment, batch_run)
    assert [r["row"] for r in records] == list(range(BATCH_ROWS))
    assert {r["outcome"] for r in records} <= {"booked", "already_booked"}
    # ...and each mapped task's record.
    outcomes = Counter(deployment.outcome(SINGLE, single_run, i)["outcome"] for i in range(MAPPED_ROWS))
    assert set(outcomes) <= {"booked", "already_booked"} and sum(outcomes.values()) == MAPPED_ROWS, outcomes
    tis = deployment.tasks(SINGLE, single_run)
    assert len(tis) == MAPPED_ROWS and all(t["state"] == "success" for t in tis)
    # Both workers ran this scenario's tasks.
    per_worker = {
        name: deployment.workloads_per_worker(SINGLE, single_run)[name]
        + deployment.workloads_per_worker(BATCH, batch_run)[name]
        for name in WORKERS
    }
    assert all(per_worker.values()), per_worker
    deployment.finished_runs.update(single=single_run, batch=batch_run)
    print(
        f"scenario 1: {MAPPED_ROWS} mapped + {BATCH_ROWS} batch rows in {took:.0f} s "
        f"(the batch {batch_done:.0f} s); "
        f"batch counts {summary['counts']}, mapped {dict(outcomes)}, workloads per worker {per_worker}, "
        f"tries > 1: {[t['map_index'] for t in tis if t['try_number'] > 1]}"
    )


def test_a_lost_worker_s_bookings_of_both_kinds_are_retried_on_the_other_and_book_once(
    deployment: Deployment,
) -> None:
    batch_rows = _rows("s2-batch-", 40, days=60, key="email")
    single_rows = _rows("s2-single-", 12, days=70, key="invitee_email")
    apply_window = float(_dag_constant("APPLY_WINDOW"))
    # Each booking is answered 200 after 3 s and enters the ledger 25 s after it arrived: later than a
    # retry (heartbeat timeout + retry delay + start) first looks, within the journal's wait (sent_at +
    # the 12 s request window + the apply window). Without that wait a lost booking is sent again.
    answer_after, late = 3.0, CONNECT_TIMEOUT + READ_TIMEOUT + apply_window - 2
    assert late > HEARTBEAT_TIMEOUT + 10
    deployment.ensure_workers()
    deployment.sim.inject(
        Fault(200, delay=answer_after, apply_after=late), times=len(batch_rows) + len(single_rows)
    )
    deployment.attribution.on = True
    try:
        batch_run = deployment.trigger(BATCH, {"rows": batch_rows})
        single_run = deployment.trigger(SINGLE, {"rows": single_rows})

        def victim() -> str | None:
            """A worker with a batch booking and a single booking in flight (arrived < 1.5 s ago)."""
            kinds: dict[str, set[str]] = {}
            for r in deployment.booking_requests("s2-"):
                if time.time() - r["at"] < 1.5 and r.get("worker"):
                    kinds.setdefault(r["worker"], set()).add(r["body"]["email"].split("-")[1])
            return next((w for w, k in kinds.items() if k == {"batch", "single"}), None)

        lost_worker = deployment.wait("a worker with bookings of both kinds in flight", victim, 180, 0.1)
        deployment.sessions.lose(lost_worker)
        killed_at = time.time()
        survivor = next(w for w in WORKERS if w != lost_worker)
        assert deployment.finished(BATCH, batch_run, timeout=400) == "success", deployment.tail()
        assert deployment.finished(SINGLE, single_run, timeout=400) == "success", deployment.tail()
    finally:
        deployment.attribution.on = False
        deployment.ensure_workers()  # the next scenarios need two workers again

    _assert_each_once(deployment, "s2-batch-", batch_rows)
    _assert_each_once(deployment, "s2-single-", single_rows)
    requests = deployment.booking_requests("s2-")
    # One booking request per row: no lost booking was sent again.
    sent = Counter(r["body"]["email"] for r in requests)
    assert {e: n for e, n in sent.items() if n != 1} == {}
    # The bookings lost in flight (sent by the lost worker, unanswered when it died; a margin of
    # 0.1 s either side of the answer's due time is left out).
    lost = sorted(
        r["body"]["email"]
        for r in requests
        if r.get("worker") == lost_worker and r["at"] > killed_at - answer_after + 0.1
    )
    assert any("-batch-" in e for e in lost) and any("-single-" in e for e in lost), lost
    # Their tries were retried on the survivor, after the heartbeat timeout.
    after = [r for r in deployment.requests("s2-") if r["at"] > killed_at]
    assert {r.get("worker") for r in after} == {survivor}
    assert min(r["at"] for r in after if r["email"] in lost) > killed_at + HEARTBEAT_TIMEOUT / 2
    assert deployment.task(BATCH, batch_run)["try_number"] >= 2
    records = _batch_records(deployment, batch_run)
    assert [r["row"] for r in records] == list(range(len(batch_rows)))
    outcomes: dict[str, str] = {}
    for email in lost:
        if "-batch-" in email:
            outcomes[email] = records[_emails(batch_rows).index(email)]["outcome"]
        else:
            index = _emails(single_rows).index(email)
            assert deployment.task(SINGLE, single_run, map_index=index)["try_number"] >= 2
            outcomes[email] = deployment.outcome(SINGLE, single_run, index)["outcome"]
    # The retries found the lost bookings after waiting out the apply window: nothing sent again.
    assert set(outcomes.values()) == {"already_booked"}, outcomes
    summary = deployment.xcom(BATCH, batch_run, "return_value")
    assert sum(summary["counts"].values()) == len(batch_rows), summary
    print(
        f"scenario 2: lost {lost_worker} with {len(lost)} bookings in flight {lost}; retried on "
        f"{survivor}, first looked up {min(r['at'] for r in after if r['email'] in lost) - killed_at:.1f} s "
        "after the kill: "
        f"{outcomes}; batch counts {summary['counts']}"
    )


def test_a_frozen_worker_s_woken_batch_try_books_nothing_after_its_successor_started(
    deployment: Deployment,
) -> None:
    import psutil

    rows = _rows("s3-batch-", 120, days=90, key="email")  # the freeze lands well before its end
    deployment.ensure_workers()
    # The try's four threads spend their time in lookups (2 s each); a booking is answered at once.
    latency = 2.0
    deployment.sim.lookup_latency = latency
    deployment.attribution.on = True
    frozen: str | None = None
    try:
        # A read timeout longer than the freeze: a woken lookup is not overdue, its "not found" is
        # read, and the thread goes on to book; what stops it must be the fences.
        run_id = deployment.trigger(BATCH, {"rows": rows, "conn_id": LONG_CONN})

        def all_looking() -> list[dict[str, Any]] | None:
            """
            Once the try has booked a few rows: its four lookups with no answer sent yet (the simulator
            stamps ``answered`` before it sends one), each arrived long enough ago that its answer is
            not due for another half second. Each of its four threads then waits for a lookup's answer,
            and none is between its journal write and its send (a window no fence closes, see
            docs/production.md).
            """
            if sum(deployment.booked("s3-").values()) < 6:
                return None
            mine = [r for r in deployment.requests("s3-") if r.get("worker")]
            pending = [r for r in mine if r["pid"] == mine[-1]["pid"] and r["answered"] is None]
            fresh = all(r["method"] == "GET" and time.time() - r["at"] < latency - 0.5 for r in pending)
            return pending if len(pending) == 4 and fresh else None

        def answered_before(when: float, looking: list[dict[str, Any]]) -> bool:
            """Whether any of those lookups had its answer sent before ``when``."""
            wanted = {(r["email"], r["at"]) for r in looking}
            return any(
                (r["email"], r["at"]) in wanted and r["answered"] is not None and r["answered"] < when
                for r in deployment.requests("s3-")
            )

        for _ in range(20):
            looking = deployment.wait("the batch try's threads to be looking", all_looking, 180, 0.05)
            old_pid, frozen = looking[0]["pid"], looking[0]["worker"]
            deployment.sessions.signal(frozen, signal.SIGSTOP)
            stopped_at = time.time()
            # The stop landed before any of the four answers was sent, or the freeze is tried again.
            if not answered_before(stopped_at, looking):
                break
            deployment.sessions.signal(frozen, signal.SIGCONT)
            frozen = None
        else:
            raise AssertionError("the worker could not be frozen before its lookups were answered")
        frozen_worker, other = frozen, next(w for w in WORKERS if w != frozen)
        old_ti = deployment.task(BATCH, run_id)  # still the frozen try's: no heartbeat timeout yet
        old_try, old_ti_id = old_ti["try_number"], old_ti["id"]
        # The rows the frozen try was looking up: the answers ("not found") wait in its sockets.
        in_lookup = sorted(r["email"] for r in looking)

        def successor() -> dict[str, Any] | None:
            new = [r for r in deployment.requests("s3-") if r["at"] > stopped_at and r.get("pid") != old_pid]
            return new[0] if new else None

        first = deployment.wait("the next try's first request", successor, 120, 0.2)
        assert first.get("worker") == other
        deployment.wait(
            "the next try to book the rows the frozen try was looking up",
            lambda: all(deployment.booked("s3-")[e] >= 1 for e in in_lookup),
            120,
            0.2,
        )
        deployment.sessions.signal(frozen, signal.SIGCONT)
        woken_at = time.time()
        frozen = None
        assert deployment.finished(BATCH, run_id, timeout=300) == "success", deployment.tail()
        deployment.wait("the woken try's process to end", lambda: not psutil.pid_exists(old_pid), 120)
    finally:
        if frozen is not None:
            deployment.sessions.signal(frozen, signal.SIGCONT)
        deployment.attribution.on = False
        deployment.sim.lookup_latency = 0.0

    woken_sends = [
        r for r in deployment.booking_requests("s3-") if r.get("pid") == old_pid and r["at"] > first["at"]
    ]
    woken_requests = Counter(
        r["method"] for r in deployment.requests("s3-") if r.get("pid") == old_pid and r["at"] > woken_at
    )
    # What the execution API answered the woken try (its old task instance id), from the API server's
    # access log: the heartbeat, the journal's writes (store), its state, its XComs.
    refused = deployment.execution_api_calls(old_ti_id, since=woken_at)
    woken_log = _after(deployment.task_log(BATCH, run_id, attempt=old_try), woken_at)
    print(
        f"scenario 3: froze {frozen_worker} (task pid {old_pid}, try {old_try}) with {in_lookup} in lookup; "
        f"its next try's first request {first['at'] - stopped_at:.1f} s later, on {other}; woken "
        f"{woken_at - stopped_at:.1f} s after the freeze. After the wake it sent Care360 "
        f"{dict(woken_requests)} (bookings after its successor started: {len(woken_sends)}); the "
        f"execution API answered its calls: {dict(refused)}\nits log after the wake:\n"
        + "\n".join(line[:300] for line in woken_log)
    )
    _assert_each_once(deployment, "s3-batch-", rows)
    assert woken_sends == [], f"the woken try booked after its successor started: {woken_sends}"
    sent = Counter(r["body"]["email"] for r in deployment.booking_requests("s3-"))
    assert {e: n for e, n in sent.items() if n != 1} == {}
    summary = deployment.xcom(BATCH, run_id, "return_value")
    assert sum(summary["counts"].values()) == len(rows), summary
    assert deployment.task(BATCH, run_id)["try_number"] > old_try
    # The server told the woken try it is stale: its task instance id is gone (the retry got a new
    # one), so its heartbeat and every journal write it attempted were refused, and none succeeded.
    assert refused and all(status >= 400 for _, status in refused), refused


def _after(log: str, when: float) -> list[str]:
    """The JSON lines of a task log stamped after ``when`` (Unix time, less a second)."""
    lines = []
    for line in log.splitlines():
        try:
            stamp = json.loads(line).get("timestamp", "")
            at = datetime.fromisoformat(stamp.replace("Z", "+00:00")).timestamp()
        except (ValueError, AttributeError, TypeError):
            continue
        if at >= when - 1:
            lines.append(line)
    return lines


def test_clearing_a_finished_batch_and_a_finished_mapped_run_books_nothing_again(
    deployment: Deployment,
) -> None:
    if not {"single", "batch"} <= set(deployment.finished_runs):
        pytest.skip("needs the runs of the first scenario")
    single_run, batch_run = deployment.finished_runs["single"], deployment.finished_runs["batch"]
    before_sent = len(deployment.booking_requests("s1-"))
    before_booked = deployment.booked("s1-")
    batch_try = deployment.task(BATCH, batch_run)["try_number"]
    single_try = deployment.task(SINGLE, single_run, map_index=0)["try_number"]
    began = time.monotonic()
    deployment.clear(BATCH, batch_run)
    deployment.clear(SINGLE, single_run)
    deployment.wait(
        "the cleared tasks to run again",
        lambda: (
            deployment.task(BATCH, batch_run)["try_number"] > batch_try
            and deployment.task(SINGLE, single_run, map_index=0)["try_number"] > single_try
        ),
        120,
    )
    assert deployment.finished(BATCH, batch_run, timeout=600) == "success", deployment.tail()
    assert deployment.finished(SINGLE, single_run, timeout=900) == "success", deployment.tail()
    took = time.monotonic() - began
    assert deployment.sim.wait_pending(timeout=60)
    assert len(deployment.booking_requests("s1-")) == before_sent
    assert deployment.booked("s1-") == before_booked
    summary = deployment.xcom(BATCH, batch_run, "return_value")
    assert summary["counts"] == {"already_booked": BATCH_ROWS}, summary["counts"]
    outcomes = Counter(deployment.outcome(SINGLE, single_run, i)["outcome"] for i in range(MAPPED_ROWS))
    assert outcomes == {"already_booked": MAPPED_ROWS}, outcomes
    print(f"scenario 4: cleared runs done in {took:.0f} s; nothing booked again")
