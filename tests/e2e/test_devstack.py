"""`make run`'s stack (`extproc dev`) end to end: the example configuration, the offline demo
model, the development issuer, and a clean stop on Ctrl-C."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import anthropic
import openai
import pytest
import yaml

from extproc.dev.procs import free_ports, port_in_use

pytestmark = pytest.mark.e2e
REPO = Path(__file__).resolve().parents[2]


def test_dev_stack_serves_the_demo_model_and_stops_cleanly(tmp_path: Path) -> None:
    cfg = yaml.safe_load((REPO / "examples" / "extproc.yaml").read_text())
    *listener_ports, demo_port = free_ports(len(cfg["listeners"]) + 1)
    ports = dict(zip(cfg["listeners"], listener_ports, strict=True))
    for k, p in ports.items():
        cfg["listeners"][k]["port"] = p
    cfg["providers"][0]["base_url"] = f"http://127.0.0.1:{demo_port}/v1"
    cfg["providers"][1]["base_url"] = f"http://127.0.0.1:{demo_port}"
    (tmp_path / "extproc.yaml").write_text(yaml.safe_dump(cfg))
    env = {k: v for k, v in os.environ.items() if k not in ("OPENAI_API_KEY", "ANTHROPIC_API_KEY", "DEMO_API_KEY")}
    proc = subprocess.Popen([sys.executable, "-m", "extproc", "dev", "--config", "extproc.yaml"], cwd=tmp_path,
                            env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    out = ""
    try:
        assert proc.stdout is not None
        deadline = time.monotonic() + 60
        while "Press Ctrl-C" not in out and time.monotonic() < deadline and proc.poll() is None:
            out += proc.stdout.readline()
        assert "Press Ctrl-C" in out, out
        assert f"http://127.0.0.1:{ports['http']}" in out and "extproc token" in out
        token = subprocess.run([sys.executable, "-m", "extproc", "token", "--sub", "alice"], cwd=tmp_path,
                               capture_output=True, text=True, check=True).stdout.strip()
        gw = f"http://127.0.0.1:{ports['http']}/demo"
        c = openai.OpenAI(base_url=gw, api_key=token, max_retries=0, timeout=20)
        reply = c.chat.completions.create(model="extproc-demo-1", messages=[{"role": "user", "content": "hi"}])
        assert reply.choices[0].message.content == "Hello from the extproc demo model. You said: hi"
        streamed = "".join(ch.choices[0].delta.content or "" for ch in c.chat.completions.create(
            model="extproc-demo-1", messages=[{"role": "user", "content": "stream"}], stream=True) if ch.choices)
        assert streamed == "Hello from the extproc demo model. You said: stream"
        a = anthropic.Anthropic(base_url=f"http://127.0.0.1:{ports['http']}/demo-anthropic", api_key=token,
                                max_retries=0, timeout=20)
        msg = a.messages.create(model="extproc-demo-1", max_tokens=50, messages=[{"role": "user", "content": "yo"}])
        assert msg.content[0].text.endswith("You said: yo")  # type: ignore[union-attr]
        with pytest.raises(openai.AuthenticationError):
            openai.OpenAI(base_url=gw, api_key="no-token", max_retries=0).models.list()
        with pytest.raises(openai.InternalServerError) as exc:  # no OPENAI_API_KEY: fail closed
            openai.OpenAI(base_url=f"http://127.0.0.1:{ports['http']}/openai", api_key=token, max_retries=0
                          ).models.list()
        assert exc.value.status_code == 503
    finally:
        proc.send_signal(signal.SIGINT)
        try:
            rc = proc.wait(30)
        except subprocess.TimeoutExpired:
            proc.kill()
            raise
    assert rc == 0
    for p in (ports["http"], ports["ext_proc"], ports["admin"], demo_port):
        assert not port_in_use("127.0.0.1", p)


def _dev_config(tmp_path: Path) -> tuple[Path, list[int]]:
    """The example configuration on free ports, in a directory of its own (a clone of its own)."""
    cfg = yaml.safe_load((REPO / "examples" / "extproc.yaml").read_text())
    *listener_ports, demo_port = free_ports(len(cfg["listeners"]) + 1)
    for k, p in zip(cfg["listeners"], listener_ports, strict=True):
        cfg["listeners"][k]["port"] = p
    cfg["providers"][0]["base_url"] = f"http://127.0.0.1:{demo_port}/v1"
    cfg["providers"][1]["base_url"] = f"http://127.0.0.1:{demo_port}"
    tmp_path.mkdir(parents=True, exist_ok=True)
    (tmp_path / "extproc.yaml").write_text(yaml.safe_dump(cfg))
    return tmp_path, [*listener_ports, demo_port]


def _start_dev(cwd: Path) -> subprocess.Popen[str]:
    env = {k: v for k, v in os.environ.items() if k not in ("OPENAI_API_KEY", "ANTHROPIC_API_KEY", "DEMO_API_KEY")}
    proc = subprocess.Popen([sys.executable, "-m", "extproc", "dev", "--config", "extproc.yaml"], cwd=cwd, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    out = ""
    assert proc.stdout is not None
    deadline = time.monotonic() + 90
    while "Press Ctrl-C" not in out and time.monotonic() < deadline and proc.poll() is None:
        out += proc.stdout.readline()
    if "Press Ctrl-C" not in out:
        proc.kill()
        raise AssertionError(f"the dev stack did not come up:\n{out}")
    return proc


def test_two_dev_stacks_coexist_and_sighup_stops_everything(tmp_path: Path) -> None:
    """Two clones' `make run` at once (each Envoy has its own base id), and closing the terminal
    (SIGHUP) stops Redis, the demo model, extproc and Envoy, so the next `make run` starts."""
    a, a_ports = _dev_config(tmp_path / "a")
    b, b_ports = _dev_config(tmp_path / "b")
    first = _start_dev(a)
    try:
        second = _start_dev(b)
    except BaseException:
        first.kill()
        raise
    for proc in (first, second):
        proc.send_signal(signal.SIGHUP)
    for proc in (first, second):
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            proc.kill()
            raise
    deadline = time.monotonic() + 10
    while any(port_in_use("127.0.0.1", p) for p in a_ports + b_ports) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert [p for p in a_ports + b_ports if port_in_use("127.0.0.1", p)] == []
    again = _start_dev(a)  # the next `make run` in the same clone
    again.send_signal(signal.SIGINT)
    assert again.wait(30) == 0
