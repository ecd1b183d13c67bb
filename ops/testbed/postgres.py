"""A private PostgreSQL cluster for the tests and the benchmark, made with the server's own `initdb`.

`private_postgres()` runs `initdb` into a fresh folder, starts `postgres` itself (not `pg_ctl`, so we hold the
process and can stop and start it) on a free port of 127.0.0.1, waits until it accepts connections, creates
the database and yields a `PostgresCluster`; on exit it stops the server and removes the folder.

PostgreSQL refuses to run as root. As root, both programs run as the `postgres` system user (else `nobody`)
in a folder that user owns, under a directory it can reach: pytest's temporary folders are private to root,
which is why the cluster goes to the system temporary directory by default and only the log (written through
a descriptor we open) goes wherever the caller likes.
"""

from __future__ import annotations

import os
import pwd
import shutil
import signal
import stat
import subprocess
import tempfile
import time
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from types import MappingProxyType

import psycopg
from psycopg import sql
from psycopg.rows import TupleRow

from .net import free_port
from .process import stop_process
from .tls import ServerTls

SUPERUSER = "postgres"
DEBIAN_ROOT = Path("/usr/lib/postgresql")
_SERVER_PROGRAMS = ("initdb", "postgres")
_RUN_AS = ("postgres", "nobody")  # as root: the first of these that exists runs the server

_INITDB_TIMEOUT_S = 120.0
_READY_TIMEOUT_S = 60.0  # two shared cores under a busy test run start a server in seconds, not in one
_READY_POLL_S = 0.05
_CONNECT_TIMEOUT_S = 2  # libpq's minimum; a refused connection fails at once anyway
_STOP_TIMEOUT_S = 30.0
_LOG_TAIL_CHARS = 3000
_TLS_CERT, _TLS_KEY = "server.pem", "server.key"  # in the cluster's folder, beside (not in) the data folder

# Settings that make the server fast and roomy without changing what a client sees. fsync and
# full_page_writes off only lose data if the OS crashes; synchronous_commit off lets the last ~0.6 s of
# commits vanish if the server process is killed (a fast shutdown, `stop()`, still writes them).
# max_connections: a test run starts many service processes, each with its own pool.
TEST_SERVER_SETTINGS: Mapping[str, str] = MappingProxyType({
    "fsync": "off",
    "synchronous_commit": "off",
    "full_page_writes": "off",
    "max_connections": "300",
})


class PostgresTestbedError(Exception):
    """A private PostgreSQL could not be made or started; the message says why (for a skip or a failure)."""


@dataclass(frozen=True, slots=True)
class _Account:
    """The unprivileged user the server runs as when we are root."""

    name: str
    uid: int
    gid: int


def find_bindir() -> Path | None:
    """The newest /usr/lib/postgresql/<version>/bin holding `initdb` and `postgres`, else the folder of the
    `initdb` on PATH (symlinks resolved). Not `pg_config --bindir`: that may name a client-only install."""
    versioned = sorted(DEBIAN_ROOT.glob("*/bin"), key=lambda bindir: _version_key(bindir.parent.name),
                       reverse=True)
    initdb = shutil.which("initdb")
    on_path = [Path(initdb).resolve().parent, Path(initdb).parent] if initdb else []
    return next((bindir for bindir in [*versioned, *on_path] if _has_server(bindir)), None)


def postgres_unavailable_reason() -> str | None:
    """Why `private_postgres()` cannot work here, or None when it can."""
    if find_bindir() is None:
        return (f"no PostgreSQL server programs ({', '.join(_SERVER_PROGRAMS)}) in {DEBIAN_ROOT}/*/bin "
                "or on PATH (Debian: apt-get install postgresql)")
    try:
        _server_account()
    except PostgresTestbedError as exc:
        return str(exc)
    return None


class PostgresCluster:
    """One data folder and its server: `start()` makes the folder the first time and runs the server until it
    accepts connections, `stop()` shuts it down (SIGINT, a fast shutdown) keeping the data and the port."""

    def __init__(
        self,
        folder: Path,
        *,
        port: int | None = None,
        log_path: Path | None = None,
        database: str = "test",
        settings: Mapping[str, str] | None = None,
        tls: ServerTls | None = None,
    ) -> None:
        bindir = find_bindir()
        if bindir is None:
            raise PostgresTestbedError(postgres_unavailable_reason() or "no PostgreSQL server programs")
        self._bindir = bindir
        self._account = _server_account()
        self.folder = folder
        self.data_dir = folder / "data"
        self.port = port if port is not None else free_port()
        self.log_path = log_path if log_path is not None else folder / "postgres.log"
        self.database = database
        self._settings = {**TEST_SERVER_SETTINGS, **(settings or {})}
        self._tls = tls
        if tls is not None:
            self._settings.update(ssl="on", ssl_cert_file=str(folder / _TLS_CERT), ssl_key_file=str(folder / _TLS_KEY))
        self._process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        """The SQLAlchemy URL of the database, as the tests and the service take it."""
        return f"postgresql+psycopg://{SUPERUSER}@127.0.0.1:{self.port}/{self.database}"

    @property
    def process(self) -> subprocess.Popen[bytes] | None:
        """The running postmaster, or None while stopped."""
        process = self._process
        return process if process is not None and process.poll() is None else None

    @property
    def pid(self) -> int | None:
        process = self.process
        return process.pid if process is not None else None

    def start(self) -> None:
        """Run the server (after `initdb` if the data folder is new) and wait until the database answers."""
        if self.process is not None:
            return
        if not (self.data_dir / "PG_VERSION").exists():
            self._initdb()
            if self._tls is not None:
                self._install_tls(self._tls)
        self._process = self._spawn(self._server_command())
        try:
            self._wait_ready()
            self._ensure_database()
        except BaseException:
            self.stop()  # no server left behind by a start that failed (or was interrupted)
            raise

    def stop(self) -> None:
        """SIGINT (fast shutdown: clients cut off, a checkpoint written), SIGKILL after the grace period."""
        process, self._process = self._process, None
        # SIGKILL to its own session: the postmaster and every backend
        stop_process(process, signal.SIGINT, _STOP_TIMEOUT_S, kill=lambda p: os.killpg(p.pid, signal.SIGKILL))

    def log_tail(self, chars: int = _LOG_TAIL_CHARS) -> str:
        try:
            return self.log_path.read_text(errors="replace")[-chars:]
        except FileNotFoundError:
            return ""

    def _initdb(self) -> None:
        command = [str(self._bindir / "initdb"), "-D", str(self.data_dir), "-A", "trust", "-U", SUPERUSER,
                   "--no-sync", "--encoding=UTF8", "--locale=C"]
        process = self._spawn(command)
        try:
            code = process.wait(timeout=_INITDB_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
            raise PostgresTestbedError(f"initdb took over {_INITDB_TIMEOUT_S:.0f} s: {self.log_tail()}") from None
        if code != 0:
            raise PostgresTestbedError(f"initdb failed (exit {code}): {self.log_tail()}")

    def _install_tls(self, tls: ServerTls) -> None:
        """The server's certificate and key beside the data folder, owned by the server's user (the key mode
        0600: PostgreSQL refuses a key others may read), and a pg_hba.conf that accepts TCP only over TLS, so
        a client that connects at all connected encrypted."""
        for source, name, mode in ((tls.cert_file, _TLS_CERT, 0o644), (tls.key_file, _TLS_KEY, 0o600)):
            target = self.folder / name
            target.write_bytes(source.read_bytes())
            target.chmod(mode)
            if self._account is not None:
                os.chown(target, self._account.uid, self._account.gid)
        hba = self.data_dir / "pg_hba.conf"
        hba.write_text("local all all trust\n"
                       "hostssl all all 127.0.0.1/32 trust\n"
                       "hostssl all all ::1/128 trust\n"
                       "hostnossl all all 0.0.0.0/0 reject\n"
                       "hostnossl all all ::/0 reject\n")

    def _server_command(self) -> list[str]:
        settings = {**self._settings, "listen_addresses": "127.0.0.1", "port": str(self.port)}
        command = [str(self._bindir / "postgres"), "-D", str(self.data_dir), "-k", str(self.folder)]
        for name, value in settings.items():
            command += ["-c", f"{name}={value}"]
        return command

    def _spawn(self, command: list[str]) -> subprocess.Popen[bytes]:
        """Start `command` as the server's user, in its own session (a terminal's Ctrl-C reaches only us,
        and the teardown stops the server in order), with its output appended to the log."""
        account = self._account
        with self.log_path.open("ab") as log:  # the child keeps its own copy of the descriptor
            return subprocess.Popen(
                command,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                cwd=self.folder,
                env=_server_env(),
                user=account.uid if account else None,
                group=account.gid if account else None,
                extra_groups=[] if account else None,  # drop root's supplementary groups too
                start_new_session=True,
            )

    def _wait_ready(self) -> None:
        """Poll until a TCP login succeeds; fail at once, with the log, if the server exits first."""
        deadline = time.monotonic() + _READY_TIMEOUT_S
        last_error: psycopg.OperationalError | None = None
        while True:
            process = self._process
            if process is None or process.poll() is not None:
                code = process.returncode if process is not None else None
                raise PostgresTestbedError(f"postgres exited with {code} before accepting connections "
                                           f"on port {self.port}: {self.log_tail()}")
            try:
                with self._connect("postgres"):
                    return
            except psycopg.OperationalError as exc:  # refused, or "the database system is starting up"
                last_error = exc
            if time.monotonic() > deadline:
                raise PostgresTestbedError(f"postgres did not accept connections on port {self.port} within "
                                           f"{_READY_TIMEOUT_S:.0f} s ({last_error}): {self.log_tail()}")
            time.sleep(_READY_POLL_S)  # a bounded poll for readiness, not synchronisation of a test

    def _ensure_database(self) -> None:
        with self._connect("postgres") as conn:
            exists = conn.execute("SELECT 1 FROM pg_database WHERE datname = %s", (self.database,)).fetchone()
            if exists is None:
                conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(self.database)))

    def _connect(self, dbname: str) -> psycopg.Connection[TupleRow]:
        return psycopg.connect(host="127.0.0.1", port=self.port, user=SUPERUSER, dbname=dbname,
                               connect_timeout=_CONNECT_TIMEOUT_S, autocommit=True)


@contextmanager
def private_postgres(
    base_dir: Path | None = None,
    *,
    log_path: Path | None = None,
    database: str = "test",
    settings: Mapping[str, str] | None = None,
    tls: ServerTls | None = None,
) -> Iterator[PostgresCluster]:
    """A started cluster in a new folder under `base_dir` (default: the system temporary directory), stopped
    and removed on exit.

    `log_path` (default: inside the folder, so removed with it) may point anywhere we can write, pytest's
    private temporary folders included, to keep the server log after the run. `settings` are added to, or
    override, TEST_SERVER_SETTINGS. With `tls` (ops/testbed/tls.py) the server speaks TLS with that certificate
    and refuses TCP clients that do not (pg_hba `hostssl` only). Raises PostgresTestbedError when the programs are missing or the server
    does not start.
    """
    folder = _make_folder(base_dir)
    try:
        cluster = PostgresCluster(folder, log_path=log_path, database=database, settings=settings, tls=tls)
        try:
            cluster.start()
            yield cluster
        finally:
            cluster.stop()
    finally:
        shutil.rmtree(folder, ignore_errors=True)  # a leftover temporary folder must not fail a finished run


def _make_folder(base_dir: Path | None) -> Path:
    """A new folder owned by the server's user (mode 0700, as initdb wants for the data folder's parent)."""
    parent = base_dir if base_dir is not None else Path(tempfile.gettempdir())
    account = _server_account()
    if account is not None and not _reachable_by(parent, account):
        raise PostgresTestbedError(
            f"user {account.name} cannot reach {parent} (a parent folder lacks the execute permission); "
            "PostgreSQL cannot run as root, so give a base_dir it can reach, e.g. under /tmp")
    folder = Path(tempfile.mkdtemp(prefix="pg-", dir=parent))
    if account is not None:
        os.chown(folder, account.uid, account.gid)
    return folder


def _server_account() -> _Account | None:
    """Whom to run the server as: None (ourselves) unless we are root."""
    if os.geteuid() != 0:
        return None
    for name in _RUN_AS:
        try:
            entry = pwd.getpwnam(name)
        except KeyError:
            continue
        return _Account(name, entry.pw_uid, entry.pw_gid)
    raise PostgresTestbedError(f"running as root and no user ({' or '.join(_RUN_AS)}) to run PostgreSQL as")


def _reachable_by(path: Path, account: _Account) -> bool:
    """Whether `account` may pass through `path` and every parent, by the owner/group/other execute bits
    (its only group is its primary one: the server starts with no supplementary groups)."""
    for folder in (path.resolve(), *path.resolve().parents):
        status = folder.stat()
        if status.st_uid == account.uid:
            bit = stat.S_IXUSR
        elif status.st_gid == account.gid:
            bit = stat.S_IXGRP
        else:
            bit = stat.S_IXOTH
        if not status.st_mode & bit:
            return False
    return True


def _server_env() -> dict[str, str]:
    """Our environment without PG* variables (PGDATA, PGPORT... would steer the programs), in the C locale
    so the log reads the same on every machine."""
    env = {name: value for name, value in os.environ.items() if not name.startswith("PG")}
    env["LC_ALL"] = "C"
    return env


def _has_server(bindir: Path) -> bool:
    return all((bindir / name).is_file() and os.access(bindir / name, os.X_OK) for name in _SERVER_PROGRAMS)


def _version_key(name: str) -> tuple[int, ...]:
    """Version folder names as numbers ("9.6" -> (9, 6), before "15"); anything else sorts last."""
    parts = name.split(".")
    return tuple(int(part) for part in parts) if all(part.isdigit() for part in parts) else (-1,)
