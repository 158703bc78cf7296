"""An embedded PostgreSQL server kept under the engine's data directory.

Used when the engine is given no database URL, so `taskyard engine` works on a bare machine.
The server binaries come from the `pgserver` wheel when it is installed, otherwise from the
machine's own PostgreSQL (`initdb`/`pg_ctl` on PATH or under /usr/lib/postgresql/*/bin). The
server listens on a Unix socket only, so it never collides with another PostgreSQL's TCP port.
"""

from __future__ import annotations

import hashlib
import importlib.util
import logging
import os
import pwd
import shutil
import subprocess
import tempfile
from pathlib import Path
from typing import Any, Literal

log = logging.getLogger(__name__)

_SOCKET_PATH_MAX = 100  # Unix socket paths are limited to ~107 bytes; keep a margin.
_PORT = 5432  # only names the socket file (.s.PGSQL.5432); TCP listening is off.


class EmbeddedPostgresError(RuntimeError):
    """The embedded PostgreSQL could not be found, initialised or started."""


def find_binaries() -> Path:
    """The directory holding `initdb` and `pg_ctl`, preferring the pgserver wheel's own build."""
    spec = importlib.util.find_spec("pgserver")
    if spec is not None and spec.origin is not None:
        bundled = Path(spec.origin).parent / "pginstall" / "bin"
        if (bundled / "pg_ctl").exists():
            return bundled
    on_path = shutil.which("pg_ctl")
    if on_path and shutil.which("initdb"):
        return Path(on_path).resolve().parent
    versions = sorted(
        Path("/usr/lib/postgresql").glob("*/bin/pg_ctl"),
        key=lambda p: int(p.parent.parent.name) if p.parent.parent.name.isdigit() else 0,
    )
    if versions:
        return versions[-1].parent
    raise EmbeddedPostgresError(
        "no database URL was given and no PostgreSQL server binaries were found for the embedded "
        "database. Either pass --database-url (or set TASKYARD_DATABASE_URL) to use your own "
        "PostgreSQL, or install the embedded server with `pip install pgserver` (CPython <= 3.12) "
        "or your system's PostgreSQL server package (initdb and pg_ctl)."
    )


class EmbeddedPostgres:
    """Starts (or reuses) a cluster in `<data_dir>/pg`; stops it only if it started it."""

    def __init__(self, data_dir: Path) -> None:
        self.pgdata = (data_dir / "pg").resolve()
        self._bin: Path | None = None
        self._started_here = False
        # PostgreSQL refuses to run as root; run it as an unprivileged account instead.
        self._run_as = _service_account() if os.geteuid() == 0 else None

    @property
    def socket_dir(self) -> Path:
        if len(str(self.pgdata / f".s.PGSQL.{_PORT}")) <= _SOCKET_PATH_MAX:
            return self.pgdata
        digest = hashlib.sha256(str(self.pgdata).encode()).hexdigest()[:12]
        return Path(tempfile.gettempdir()) / f"taskyard-pg-{digest}"

    @property
    def url(self) -> str:
        return f"postgresql://postgres@/postgres?host={self.socket_dir}&port={_PORT}"

    def start(self) -> str:
        """Initialise the cluster if needed, start it unless it already runs; returns its URL."""
        self._bin = find_binaries()
        self.pgdata.mkdir(parents=True, exist_ok=True)
        self._prepare_permissions()
        if not (self.pgdata / "PG_VERSION").exists():
            log.info("initialising embedded PostgreSQL in %s", self.pgdata)
            self._run(
                "initdb",
                "-D",
                str(self.pgdata),
                "--auth=trust",
                "--encoding=UTF8",
                "--username=postgres",
                "--no-instructions",
            )
        if self.is_running():
            log.info("reusing the embedded PostgreSQL already running in %s", self.pgdata)
            return self.url
        self.socket_dir.mkdir(parents=True, exist_ok=True)
        if self._run_as is not None:
            os.chown(self.socket_dir, self._run_as.pw_uid, self._run_as.pw_gid)
        options = f"-h '' -k {self.socket_dir} -p {_PORT}"
        self._run(
            "pg_ctl",
            "-D",
            str(self.pgdata),
            "-l",
            str(self.pgdata / "server.log"),
            "-o",
            options,
            "-w",
            "-t",
            "60",
            "start",
        )
        self._started_here = True
        log.info("embedded PostgreSQL started in %s", self.pgdata)
        return self.url

    def is_running(self) -> bool:
        if self._bin is None:
            self._bin = find_binaries()
        result = subprocess.run(
            [str(self._bin / "pg_ctl"), "-D", str(self.pgdata), "status"],
            capture_output=True,
            text=True,
            check=False,
            **self._identity(),
        )
        return result.returncode == 0

    def stop(self, mode: Literal["fast", "immediate"] = "fast") -> None:
        """Stop the server if this object started it (a server someone else runs is left alone).
        `immediate` is a crash: no checkpoint, recovery from the WAL on the next start (the
        chaos run uses it)."""
        if not self._started_here:
            return
        self._run("pg_ctl", "-D", str(self.pgdata), "-m", mode, "-w", "stop")
        self._started_here = False
        log.info("embedded PostgreSQL stopped")

    def _identity(self) -> dict[str, Any]:
        """subprocess arguments to run as the service account, groups included: keeping root's
        group would subject it to the group bits of root-owned parent directories."""
        if self._run_as is None:
            return {}
        return {"user": self._run_as.pw_uid, "group": self._run_as.pw_gid, "extra_groups": []}

    def _run(self, program: str, *args: str) -> None:
        assert self._bin is not None
        result = subprocess.run(
            [str(self._bin / program), *args],
            capture_output=True,
            text=True,
            check=False,
            **self._identity(),
        )
        if result.returncode != 0:
            log_file = self.pgdata / "server.log"
            server_log = log_file.read_text(errors="replace")[-2000:] if log_file.exists() else ""
            raise EmbeddedPostgresError(
                f"{program} failed with exit code {result.returncode}: "
                f"{result.stderr.strip() or result.stdout.strip()}\n{server_log}".strip()
            )

    def _prepare_permissions(self) -> None:
        """As root, hand the cluster to the service account and let it reach the binaries."""
        if self._run_as is None:
            return
        os.chown(self.pgdata, self._run_as.pw_uid, self._run_as.pw_gid)
        self.pgdata.chmod(0o700)
        assert self._bin is not None
        for path in (self.pgdata, self._bin):
            for parent in path.parents:
                mode = parent.stat().st_mode
                if not mode & 0o001:  # the service account must be able to traverse each parent
                    parent.chmod(mode | 0o001)


def _service_account() -> pwd.struct_passwd:
    for name in ("postgres", "taskyard"):
        try:
            return pwd.getpwnam(name)
        except KeyError:
            continue
    subprocess.run(
        ["useradd", "--system", "--no-create-home", "taskyard"], check=True, capture_output=True
    )
    return pwd.getpwnam("taskyard")
