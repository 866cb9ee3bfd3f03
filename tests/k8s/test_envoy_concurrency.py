"""The sidecar's Envoy really runs with the configured worker count (in a network
namespace, so the shipped config's fixed ports cannot collide with anything)."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

import yaml

from extproc.config.envoy import dump_yaml
from extproc.config.load import load_config
from tests.k8s.podrunner import PodNetwork, require_root

ROOT = Path(__file__).resolve().parents[2]


def test_extproc_envoy_run_passes_concurrency(tmp_path: Path) -> None:
    require_root()
    raw = yaml.safe_load((ROOT / "k8s/base/config/extproc.yaml").read_text())
    raw.setdefault("envoy", {})["concurrency"] = 3
    # The admin interface on TCP inside the namespace: this reads /server_info, while the shipped
    # sidecar puts it on a socket in the pod's private volume (tests/e2e/test_app_seat.py).
    raw["listeners"]["envoy_admin"] = {"address": "127.0.0.1", "port": 9901}
    raw["listeners"].pop("envoy_probe", None)
    cfg_file = tmp_path / "extproc.yaml"
    cfg_file.write_text(yaml.safe_dump(raw))
    boot = tmp_path / "envoy.yaml"
    boot.write_text(dump_yaml(load_config(cfg_file, env={})))
    exe = str(Path(sys.executable).parent / "extproc")
    with PodNetwork() as net:
        ns = net.exec_prefix()
        envoy = subprocess.Popen([*ns, exe, "envoy", "run", "--config", str(cfg_file), "--bootstrap", str(boot),
                                  "--log-level", "warn"], stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
        try:
            info = None
            for _ in range(100):
                got = subprocess.run([*ns, sys.executable, "-c",
                                      "import urllib.request as u;print(u.urlopen('http://127.0.0.1:9901/server_info',"
                                      " timeout=1).read().decode())"], capture_output=True, text=True)
                if got.returncode == 0:
                    info = json.loads(got.stdout)
                    break
                assert envoy.poll() is None, envoy.stdout.read().decode() if envoy.stdout else ""
                time.sleep(0.2)
            assert info is not None
            assert info["command_line_options"]["concurrency"] == 3
        finally:
            envoy.terminate()
            envoy.wait(10)
