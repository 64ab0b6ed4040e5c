"""Safe defaults: loopback unless a login is set, no server paths on pages, `mmedagent ui` refusals."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
from pydantic import SecretStr

from app.config import Settings, UISettings
from ui.app import login
from ui.safety import UnsafeBindError, check_bind, is_loopback, redact_paths


@pytest.mark.parametrize("host", ["127.0.0.1", "127.0.0.2", "::1", "localhost"])
def test_loopback_hosts_need_no_login(host):
    assert is_loopback(host)
    check_bind(host, None)


@pytest.mark.parametrize("host", ["0.0.0.0", "::", "192.168.1.20", "10.0.0.5"])
def test_network_hosts_require_a_login_and_say_how(host):
    assert not is_loopback(host)
    with pytest.raises(UnsafeBindError, match="MMEDAGENT_UI__USERNAME and MMEDAGENT_UI__PASSWORD"):
        check_bind(host, None)
    check_bind(host, ("clinic", "pw"))


def test_login_comes_from_settings_and_half_a_login_is_an_error(tmp_path):
    assert login(Settings(home=tmp_path)) is None
    full = Settings(home=tmp_path, ui=UISettings(username="clinic", password=SecretStr("pw")))
    assert login(full) == ("clinic", "pw")
    with pytest.raises(ValueError, match="both"):
        login(Settings(home=tmp_path, ui=UISettings(username="clinic")))


def test_login_settings_read_from_the_environment(tmp_path, monkeypatch):
    monkeypatch.setenv("MMEDAGENT_UI__USERNAME", "clinic")
    monkeypatch.setenv("MMEDAGENT_UI__PASSWORD", "from-env")
    monkeypatch.setenv("MMEDAGENT_UI__HOST", "0.0.0.0")
    s = Settings(home=tmp_path)
    assert (s.ui.host, login(s)) == ("0.0.0.0", ("clinic", "from-env"))
    assert "from-env" not in repr(s)  # a SecretStr: never in logs or tracebacks


def test_redact_paths_keeps_only_the_last_segment():
    text = "cannot load /srv/models/qwen2.5-vl-7b: OSError at /tmp/x/y.safetensors"
    assert redact_paths(text) == "cannot load …/qwen2.5-vl-7b: OSError at …/y.safetensors"
    assert redact_paths("Qwen/Qwen2.5-VL-3B-Instruct") == "Qwen/Qwen2.5-VL-3B-Instruct"  # a hub id
    assert redact_paths("see https://example.org/a/b") == "see https://example.org/a/b"
    assert redact_paths(None) is None


def _mmedagent_ui(*args: str, env: dict[str, str]) -> subprocess.CompletedProcess:
    exe = Path(sys.executable).with_name("mmedagent")
    return subprocess.run([str(exe), "ui", *args], env=env, capture_output=True, text=True, timeout=120)


@pytest.mark.slow
def test_cli_refuses_a_network_bind_without_login_before_loading_anything(tmp_path):
    env = {**os.environ, "MMEDAGENT_HOME": str(tmp_path / "home")}
    env.pop("MMEDAGENT_UI__USERNAME", None)
    env.pop("MMEDAGENT_UI__PASSWORD", None)
    out = _mmedagent_ui("--host", "0.0.0.0", env=env)
    assert out.returncode == 2
    assert "requires a login" in out.stderr and "MMEDAGENT_UI__PASSWORD" in out.stderr
    # as typed: Rich markup would drop "[ui]" and leave a double space
    assert "(or [ui] username/password in mmedagent.toml)" in out.stderr
    assert not (tmp_path / "home").exists()  # refused before the model or the database was touched
    half = _mmedagent_ui("--host", "127.0.0.1", env={**env, "MMEDAGENT_UI__USERNAME": "clinic"})
    assert half.returncode == 2 and "PASSWORD" in half.stderr


@pytest.mark.slow
def test_cli_serves_on_loopback_by_default(tmp_path, tiny_model_dir):
    import httpx

    from tests.ui_server import free_port

    port = free_port()
    env = {
        **os.environ,
        "MMEDAGENT_HOME": str(tmp_path / "home"),
        "MMEDAGENT_MODEL": str(tiny_model_dir),
        "HF_HUB_OFFLINE": "1",
    }
    exe = Path(sys.executable).with_name("mmedagent")
    proc = subprocess.Popen(
        [str(exe), "ui", "--port", str(port)],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        banner = ""
        while "mmedagent UI on" not in banner:
            line = proc.stdout.readline()
            assert line, "mmedagent ui exited without serving"
            banner = line
        assert f"http://127.0.0.1:{port}" in banner and "reachable from this machine only" in banner
        page = None
        for _ in range(300):
            try:
                page = httpx.get(f"http://127.0.0.1:{port}/", timeout=2)
                break
            except httpx.TransportError:
                assert proc.poll() is None, proc.stdout.read()
                time.sleep(0.2)
        assert page is not None and page.status_code == 200
        config = httpx.get(f"http://127.0.0.1:{port}/config", timeout=5).text
        for text in (page.text, config):  # neither the home folder nor the model path leaks
            assert str(tmp_path) not in text and str(tiny_model_dir) not in text
    finally:
        proc.terminate()
        proc.wait(timeout=30)
