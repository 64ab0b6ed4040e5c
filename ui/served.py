"""Where the app writes what it serves, and its removal however the process ends.

Image previews, run JSON, exports, Gradio's copies of them and its upload cache hold patient data.
They all live under one folder per process, ``<tmp>/mmedagent-ui-<uid>/<pid>-<start>/``, marked
(``owner.json``) with its owner's pid and start time. Each app has a subfolder of it, Gradio's
cache and upload folder included, removed when its server shuts down (``ui.app.launch``); the process
folder goes when the process exits: normally, on Ctrl-C, or on SIGTERM/SIGHUP once
:func:`stop_on_signals` has made those exit cleanly too. A SIGKILL leaves it: the next process of
this app removes every folder whose marker names a dead process, and nothing else.
"""

from __future__ import annotations

import atexit
import json
import logging
import os
import shutil
import signal
import stat
import tempfile
from pathlib import Path
from types import FrameType

from data.leases import process_alive, process_start

log = logging.getLogger(__name__)

MARKER = "owner.json"
APP = "mmedagent-ui"
_process_folder: Path | None = None


def served_root() -> Path:
    """The folder holding every process's served files (one per user of the machine)."""
    return Path(tempfile.gettempdir()) / f"{APP}-{os.getuid()}"


def _owner(folder: Path) -> dict | None:
    """The marker's owner, or None where the folder carries no valid marker of this app."""
    try:
        owner = json.loads((folder / MARKER).read_text())
    except (OSError, ValueError):
        return None
    ok = isinstance(owner, dict) and owner.get("app") == APP and isinstance(owner.get("pid"), int)
    return owner if ok else None


def sweep(root: Path) -> list[Path]:
    """Remove the folders under ``root`` left by dead processes of this app; returns them.

    Only folders whose marker is this app's and names a process no longer running go: a folder
    without a marker, or of a live process, is left as it is.
    """
    removed = []
    for folder in sorted(root.iterdir()) if root.is_dir() else []:
        if folder.is_symlink() or not folder.is_dir():
            continue
        owner = _owner(folder)
        if owner is None or process_alive(owner["pid"], owner["started"]):  # a reused pid: another start
            continue
        shutil.rmtree(folder, ignore_errors=True)
        removed.append(folder)
    if removed:
        log.info("removed %d served-files folder(s) left by ended processes of this app", len(removed))
    return removed


def _own_root(root: Path) -> None:
    root.mkdir(mode=0o700, exist_ok=True)
    info = os.lstat(root)
    if stat.S_ISLNK(info.st_mode) or not stat.S_ISDIR(info.st_mode) or info.st_uid != os.getuid():
        raise RuntimeError(f"{root} is not a folder of this user; remove it or set TMPDIR")


def process_folder() -> Path:
    """This process's served-files folder, made on first use.

    Making it sweeps what dead processes of this app left; it is removed when the process exits.
    """
    global _process_folder
    if _process_folder is None or not _process_folder.is_dir():
        root = served_root()
        _own_root(root)
        sweep(root)
        pid = os.getpid()
        started = process_start(pid) or "0"
        folder = root / f"{pid}-{started}"
        folder.mkdir(mode=0o700, exist_ok=True)
        (folder / MARKER).write_text(json.dumps({"app": APP, "pid": pid, "started": started}))
        if _process_folder is None:
            atexit.register(_remove_process_folder)
        _process_folder = folder
    return _process_folder


def _remove_process_folder() -> None:
    if _process_folder is not None:
        shutil.rmtree(_process_folder, ignore_errors=True)


def app_folder() -> Path:
    """A fresh folder for one app's served files, inside this process's folder; its ``gradio``
    subfolder becomes Gradio's cache and upload folder for the Blocks and server made next."""
    folder = Path(tempfile.mkdtemp(prefix="app-", dir=process_folder()))
    os.environ["GRADIO_TEMP_DIR"] = str(folder / "gradio")
    return folder


def _interrupt(signum: int, _frame: FrameType | None) -> None:
    log.info("%s received: shutting down", signal.Signals(signum).name)
    raise KeyboardInterrupt


def stop_on_signals() -> None:
    """Make SIGTERM (systemd, docker) and SIGHUP stop the server as Ctrl-C does: the server shuts
    down and the process exits, so the served files are removed. A signal the process was started
    ignoring (SIGHUP under ``nohup``) stays ignored. Call from the main thread."""
    for sig in (signal.SIGTERM, signal.SIGHUP):
        if signal.getsignal(sig) is not signal.SIG_IGN:
            signal.signal(sig, _interrupt)
