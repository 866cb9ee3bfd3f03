"""Smoke test of the built image (``make image-test``): its file system, as the users the
manifests run it as. Containers cannot be run on the build machines (no working crun), so
the image is mounted (``podman image mount``) and used as a root file system: chroot +
setpriv for the commands, and :mod:`tests.k8s.podrunner` for the injected pod, whose
sidecars *and* app come from the image."""

from __future__ import annotations

import json
import os
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.k8s.podrunner import ImageRoot, PodNetwork, require_root
from tests.k8s.test_pod_runs import APP, APP_IMAGE, ISSUER, OPENAI_KEY, app_pod, injected, runner, settings
from tests.k8s.world import world

IMAGE = os.environ.get("IMAGE", "ghcr.io/extproc/extproc:0.1.0")


def inspect() -> dict[str, object]:
    out = subprocess.run(["podman", "image", "inspect", IMAGE], capture_output=True, text=True, check=True)
    doc: dict[str, object] = json.loads(out.stdout)[0]
    return doc


@pytest.fixture(scope="module")
def rootfs() -> Iterator[Path]:
    require_root()
    path = subprocess.run(["podman", "image", "mount", IMAGE], capture_output=True, text=True, check=True)
    yield Path(path.stdout.strip())
    subprocess.run(["podman", "image", "unmount", IMAGE], capture_output=True, check=False)


def image_path() -> str:
    env = inspect()["Config"]["Env"]  # type: ignore[index]
    return next(e.split("=", 1)[1] for e in env if e.startswith("PATH="))


def as_user(root: Path, uid: int, *argv: str) -> subprocess.CompletedProcess[str]:
    """Run in the image as ``uid`` with the root file system read-only (as in the pods)."""
    script = (
        'set -e; t=$(mktemp -d); mount --bind "$0" "$t"; mount -o remount,bind,ro "$t"; '
        'mount -t proc proc "$t/proc"; exec chroot "$t" setpriv --reuid=$1 --regid=$1 --clear-groups '
        '--no-new-privs -- env -i PATH="$2" "${@:3}"'
    )
    return subprocess.run(["unshare", "--mount", "--propagation", "private", "bash", "-c", script,
                           str(root), str(uid), image_path(), *argv],
                          capture_output=True, text=True, timeout=60)


def test_image_config() -> None:
    cfg = inspect()["Config"]
    assert cfg["User"] == "10001:10001"  # type: ignore[index]


@pytest.mark.parametrize("uid", [10001, 47001])
def test_commands_as_the_image_users(rootfs: Path, uid: int) -> None:
    r = as_user(rootfs, uid, "extproc", "--help")
    assert r.returncode == 0 and "serve" in r.stdout, r.stderr
    r = as_user(rootfs, uid, "envoy", "--version")
    assert r.returncode == 0 and "1.40.0" in r.stdout, r.stderr
    r = as_user(rootfs, uid, "python3", "-c", "import urllib.request, sys; print(sys.version_info[:2])")
    assert r.returncode == 0, r.stderr
    r = as_user(rootfs, uid, "id", "-u")
    assert r.stdout.strip() == str(uid)


def test_iptables_for_the_redirect(rootfs: Path) -> None:
    r = as_user(rootfs, 0, "iptables", "--version")
    assert r.returncode == 0 and "iptables" in r.stdout, r.stderr
    r = as_user(rootfs, 0, "ip6tables", "--version")
    assert r.returncode == 0, r.stderr


def test_the_injected_pod_from_the_image_serves_a_request(rootfs: Path, tmp_path: Path) -> None:
    img = ImageRoot(rootfs=rootfs, path=image_path())
    with PodNetwork() as net, world(net.host_ip, tmp_path, ISSUER) as w:
        pod = injected(settings(), app_pod(["python3", "-c", APP]))
        pr = runner(pod, w, net, tmp_path / "pod", {"openai": OPENAI_KEY},
                    images={"ghcr.io/extproc/extproc:0.1.0": img, APP_IMAGE: img})
        try:
            started = pr.start_pod()
            started["app"].popen.wait(60)
            out = started["app"].output()
            assert "STATUS 200" in out and "Hello from the fake." in out, out + pr.logs()
            (seen,) = w.upstream.requests
            assert seen.headers["authorization"] == "Bearer " + OPENAI_KEY.decode()
        finally:
            pr.stop()
