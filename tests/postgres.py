"""A throwaway PostgreSQL server for the tests: Debian's binaries, a temp data dir, a unix socket.

``initdb`` refuses to run as root, so under root the server runs as the ``postgres`` system user
(created by the Debian package) via ``runuser``. It listens on a socket in its own temp dir only
(no TCP port), with fsync off: the data dies with the test session anyway.
"""

from __future__ import annotations

import glob
import os
import pwd
import shutil
import subprocess
import tempfile
import uuid
from pathlib import Path

PORT = 5432  # only names the socket file; nothing listens on TCP


class PostgresUnavailable(RuntimeError):
    """No server could be started here; the message says why (the tests skip with it)."""


def _bin_dir() -> Path:
    found = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"), key=lambda p: int(p.split("/")[4]))
    if found:
        return Path(found[-1]).parent
    initdb = shutil.which("initdb")
    if initdb:
        return Path(initdb).parent
    raise PostgresUnavailable(
        "PostgreSQL server binaries (initdb, pg_ctl) not found: install the Debian package "
        "`postgresql` (scripts/system-deps.sh does it when run as root)"
    )


class PostgresServer:
    """A running server; ``create_database`` gives each test its own empty database."""

    def __init__(self) -> None:
        self.bin = _bin_dir()
        self.run_as = None
        if os.geteuid() == 0:
            try:
                self.run_as = pwd.getpwnam("postgres")
            except KeyError:
                raise PostgresUnavailable(
                    "running as root and there is no `postgres` user to run the server"
                ) from None
        # Not under pytest's tmp dir: that one is mode 0700 and the server user could not enter it.
        self.root = Path(tempfile.mkdtemp(prefix="mmedagent-pg-"))
        self.data, self.socket = self.root / "data", self.root / "sock"
        self.socket.mkdir()
        if self.run_as:
            for p in (self.root, self.socket):
                os.chown(p, self.run_as.pw_uid, self.run_as.pw_gid)
        self.user = "postgres"
        try:
            self._cmd(
                "initdb", "-D", str(self.data), "-U", self.user, "-A", "trust", "-E", "UTF8", "--no-sync"
            )
            opts = f"-c listen_addresses='' -k {self.socket} -p {PORT} -c fsync=off -c full_page_writes=off"
            self._cmd(
                "pg_ctl",
                "start",
                "-w",
                "-t",
                "60",
                "-D",
                str(self.data),
                "-l",
                str(self.root / "log"),
                "-o",
                opts,
            )
        except PostgresUnavailable:
            shutil.rmtree(self.root, ignore_errors=True)
            raise

    def _cmd(self, tool: str, *args: str) -> None:
        cmd = [str(self.bin / tool), *args]
        if self.run_as:
            cmd = ["runuser", "-u", self.run_as.pw_name, "--", *cmd]
        out = subprocess.run(cmd, capture_output=True, text=True, timeout=120, cwd=self.root)
        if out.returncode != 0:
            log = self.root / "log"
            tail = log.read_text()[-2000:] if log.exists() else ""
            raise PostgresUnavailable(
                f"{tool} failed ({out.returncode}): {out.stderr.strip()} {tail}".strip()
            )

    def url(self, database: str) -> str:
        return f"postgresql+psycopg://{self.user}@/{database}?host={self.socket}&port={PORT}"

    def _admin(self, sql: str) -> None:
        import psycopg

        with psycopg.connect(
            host=str(self.socket), port=PORT, user=self.user, dbname="postgres", autocommit=True
        ) as conn:
            conn.execute(sql)

    def create_database(self) -> str:
        name = f"t_{uuid.uuid4().hex[:12]}"
        self._admin(f'CREATE DATABASE "{name}"')
        return self.url(name)

    def drop_database(self, url: str) -> None:
        name = url.split("/")[3].split("?")[0]
        self._admin(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')

    def stop(self) -> None:
        try:
            self._cmd("pg_ctl", "stop", "-D", str(self.data), "-m", "immediate")
        finally:
            shutil.rmtree(self.root, ignore_errors=True)
