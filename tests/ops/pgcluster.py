"""A throwaway PostgreSQL 15 cluster for tests: initdb in a temp dir as the ``postgres`` user,
listening only on a Unix socket in that dir; stopped (and stoppable mid-test) and removed after."""

from __future__ import annotations

import os
import pwd
import shutil
import subprocess
import tempfile
import time
from pathlib import Path

PG_BIN = Path("/usr/lib/postgresql/15/bin")


def _as_postgres(*args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["runuser", "-u", "postgres", "--", *args], capture_output=True, text=True,
                          timeout=timeout, check=True)


class PgCluster:
    """``url`` reaches database ``vmcrash`` as superuser ``postgres`` over the socket."""

    def __init__(self) -> None:
        if not (PG_BIN / "initdb").exists():
            raise AssertionError(f"PostgreSQL 15 is not installed ({PG_BIN}/initdb missing)")
        self.dir = Path(tempfile.mkdtemp(prefix="vmcrash-pg-"))
        pw = pwd.getpwnam("postgres")
        os.chown(self.dir, pw.pw_uid, pw.pw_gid)
        self.data = self.dir / "data"
        self.sock = self.dir
        _as_postgres(str(PG_BIN / "initdb"), "-D", str(self.data), "-A", "trust", "-U", "postgres",
                     "--no-sync", "-E", "UTF8")
        self.url = f"postgresql://postgres@/vmcrash?host={self.sock}"
        self.start()
        _as_postgres(str(PG_BIN / "createdb"), "-h", str(self.sock), "-U", "postgres", "vmcrash")

    def start(self) -> None:
        _as_postgres(str(PG_BIN / "pg_ctl"), "-D", str(self.data), "-w", "-t", "60", "-l",
                     str(self.dir / "log"), "-o", f"-k {self.sock} -c listen_addresses='' -c fsync=off "
                     "-c max_connections=50", "start", timeout=90)

    def stop(self) -> None:
        _as_postgres(str(PG_BIN / "pg_ctl"), "-D", str(self.data), "-w", "-m", "fast", "stop", timeout=90)

    def psql(self, sql: str) -> list[list[str]]:
        """Rows of a query through psql (ground truth from outside vmcrash)."""
        out = _as_postgres(str(PG_BIN / "psql"), "-h", str(self.sock), "-U", "postgres", "-d", "vmcrash",
                           "-At", "-F", "\t", "-c", sql).stdout
        return [line.split("\t") for line in out.splitlines() if line]

    def close(self) -> None:
        try:
            if (self.data / "postmaster.pid").exists():
                self.stop()
        finally:
            shutil.rmtree(self.dir, ignore_errors=True)


def wait_for(pred, timeout_s: float, what: str) -> None:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout_s
    while not pred():
        if time.monotonic() > deadline:
            raise AssertionError(f"{what} not within {timeout_s} s")
        time.sleep(0.1)
