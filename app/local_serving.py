"""Local model servers behind the shipped nginx balancer, for tests, benchmarks and one-machine trials.

:class:`TransformersServe` runs ``transformers serve`` on a checkpoint (CPU, offline, one torch
thread) on a loopback port. :class:`NginxBalancer` runs Debian's nginx as a foreground process with
the shipped config (``docs/deploy/nginx-balancer.conf``, see docs/deploy.md "Several model servers
per role"), its prefix (pid, logs, temp files) in a temp folder of its own. The config is used as
shipped: :func:`render_balancer_config` replaces its ``listen`` address and its upstream's ``server``
addresses (every server keeps the first server line's parameters) and nothing else.
"""

from __future__ import annotations

import logging
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Callable, Sequence
from pathlib import Path

logger = logging.getLogger(__name__)

SHIPPED_CONFIG = Path(__file__).resolve().parents[1] / "docs" / "deploy" / "nginx-balancer.conf"

_UPSTREAM = re.compile(r"^\s*upstream\s+\S+\s*\{")
_SERVER = re.compile(r"^(\s*)server\s+(\S+?)((?:\s+[^;#]*)?;.*)$")
_LISTEN = re.compile(r"^(\s*listen\s+)(\S+?)((?:\s+[^;#]*)?;.*)$")


class BalancerUnavailable(RuntimeError):
    """nginx is not installed here; the message says how to get it (tests skip with it)."""


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listened on a moment ago."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def render_balancer_config(text: str, listen: str, servers: Sequence[str]) -> str:
    """``text`` (an nginx config with one ``listen`` line and one ``upstream`` block) with the
    listen address replaced by ``listen`` and the upstream's server lines by one line per address in
    ``servers``, each with the parameters of the config's first server line."""
    if not servers:
        raise ValueError("need at least one server address")
    out: list[str] = []
    in_upstream, template, listens = False, None, 0
    for line in text.splitlines():
        code = line.split("#", 1)[0]
        if not in_upstream and _UPSTREAM.match(code):
            in_upstream = True
        elif in_upstream and code.strip() == "}":
            in_upstream = False
        elif in_upstream and (server := _SERVER.match(line)) and not line.lstrip().startswith("#"):
            if template is None:
                template = server
                out += [f"{server.group(1)}server {address}{server.group(3)}" for address in servers]
            continue
        elif (found := _LISTEN.match(line)) and not line.lstrip().startswith("#"):
            listens += 1
            line = f"{found.group(1)}{listen}{found.group(3)}"
        out.append(line)
    if template is None or listens != 1:
        raise ValueError(f"expected an upstream with server lines and one listen line ({listens} found)")
    return "\n".join(out) + "\n"


def _tail(path: Path, chars: int = 3000) -> str:
    return path.read_text(errors="replace")[-chars:] if path.exists() else ""


def _wait(
    ready: Callable[[], bool], process: subprocess.Popen[bytes] | None, log: Path, what: str, timeout_s: float
) -> None:
    """Poll ``ready()`` until it is true; fail with ``log``'s tail if the process exits or time runs out."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if process is None or process.poll() is not None:
            raise RuntimeError(f"{what} is not running:\n{_tail(log)}")
        if ready():
            return
        time.sleep(0.25)
    raise TimeoutError(f"{what} not ready after {timeout_s:g}s:\n{_tail(log)}")


def _stop(process: subprocess.Popen[bytes] | None, sig: signal.Signals) -> None:
    if process is not None and process.poll() is None:
        process.send_signal(sig)
        process.wait(timeout=30)


class TransformersServe:
    """``transformers serve MODEL`` on 127.0.0.1:port, pinned to the model, logging to ``log``.

    Each request it answers is a ``"POST /v1/chat/completions HTTP/1.1" 200`` line in its log."""

    def __init__(self, model_dir: Path, log: Path, port: int | None = None) -> None:
        self.model_dir, self.log, self.port = model_dir, log, port or free_port()
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    @property
    def base_url(self) -> str:
        return f"http://{self.address}/v1"

    def start(self) -> None:
        command = [str(Path(sys.executable).with_name("transformers")), "serve", str(self.model_dir)]
        command += ["--host", "127.0.0.1", "--port", str(self.port), "--device", "cpu", "--dtype", "float32"]
        env = os.environ | {"HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
        with self.log.open("ab") as log:
            self.process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, env=env)
        logger.info("transformers serve on %s (pid %d), log %s", self.address, self.process.pid, self.log)

    def wait_ready(self, timeout_s: float = 180.0) -> None:
        def healthy() -> bool:
            import httpx

            try:
                return httpx.get(f"http://{self.address}/health", timeout=2).status_code == 200
            except httpx.TransportError:
                return False

        _wait(healthy, self.process, self.log, f"transformers serve on {self.address}", timeout_s)

    def answered(self) -> int:
        """Chat completions this server has answered (with 200), from its log."""
        return _tail(self.log, sys.maxsize).count('"POST /v1/chat/completions HTTP/1.1" 200')

    def kill(self) -> None:
        """SIGKILL, as a crash would: no graceful shutdown."""
        _stop(self.process, signal.SIGKILL)


def nginx_binary() -> str:
    """The nginx executable (Debian puts it in /usr/sbin, often not on a user's PATH)."""
    found = shutil.which("nginx") or ("/usr/sbin/nginx" if os.access("/usr/sbin/nginx", os.X_OK) else None)
    if found is None:
        raise BalancerUnavailable(
            "nginx not found: install the Debian package `nginx` (scripts/system-deps.sh does it as root)"
        )
    return found


class NginxBalancer:
    """nginx in the foreground with the shipped config, on 127.0.0.1:``port`` in front of ``servers``
    (``host:port`` addresses). Its prefix (config, pid, logs, temp folders) is a fresh temp folder,
    removed by :meth:`stop`; ``access.log`` there names the server of every request."""

    def __init__(
        self, servers: Sequence[str], *, port: int | None = None, config: Path = SHIPPED_CONFIG
    ) -> None:
        self.servers, self.port, self.config = list(servers), port or free_port(), config
        self.prefix = Path(tempfile.mkdtemp(prefix="mmedagent-nginx-"))
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}/v1"

    @property
    def access_log(self) -> Path:
        return self.prefix / "access.log"

    def start(self, timeout_s: float = 30.0) -> None:
        """Start nginx and wait until it accepts connections."""
        text = render_balancer_config(self.config.read_text(), f"127.0.0.1:{self.port}", self.servers)
        conf = self.prefix / "nginx.conf"
        conf.write_text(text)
        if os.geteuid() == 0:
            self.prefix.chmod(0o755)  # root's workers run as nobody: they must reach the temp folders
        output = self.prefix / "nginx.out"
        command = [nginx_binary(), "-p", f"{self.prefix}/", "-c", str(conf), "-g", "daemon off;"]
        with output.open("ab") as out:
            self.process = subprocess.Popen(command, stdout=out, stderr=subprocess.STDOUT)
        logger.info("nginx on 127.0.0.1:%d in front of %s, prefix %s", self.port, self.servers, self.prefix)

        def accepting() -> bool:
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=1).close()
                return True
            except OSError:
                return False

        log = self.prefix / "error.log"
        _wait(accepting, self.process, log if log.exists() else output, "nginx", timeout_s)

    def upstream_counts(self) -> Counter[str]:
        """Attempts per server address, from the access log (a request passed on counts for both;
        one answered "no live upstreams", without trying a server, counts for none)."""
        counts: Counter[str] = Counter()
        for line in _tail(self.access_log, sys.maxsize).splitlines():
            if found := re.search(r"upstream=(.*?) upstream_status=", line):
                counts.update(a for a in re.split(r"[,:] ", found.group(1)) if re.fullmatch(r"\S+:\d+", a))
        return counts

    def stop(self, keep_prefix: bool = False) -> None:
        """Fast shutdown (SIGTERM); the prefix folder is removed unless ``keep_prefix``."""
        _stop(self.process, signal.SIGTERM)
        if not keep_prefix:
            shutil.rmtree(self.prefix, ignore_errors=True)

    def __enter__(self) -> NginxBalancer:
        self.start()
        return self

    def __exit__(self, *_: object) -> None:
        self.stop()
