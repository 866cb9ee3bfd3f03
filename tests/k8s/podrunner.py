"""Run a Pod spec as local processes, the way a kubelet would, without a cluster.

No cluster can be started on the test machines, so this is the closest honest check of a
pod spec (the injector's output above all): each container of the spec runs as a process
with the spec's ``command``/``args`` (``$(VAR)`` expanded), ``env`` (values, Secret and
ConfigMap refs, the downward API), ``workingDir``, user and group ids, capabilities, a
read-only root file system when asked, and its ``volumeMounts`` — bind-mounted at their
real paths in a private mount namespace over an overlay of the image's root file system.
Volume files are materialised from the ConfigMaps and Secrets given here with kubelet's
ownership and mode rules (:func:`materialise`). The pod gets its own network namespace
with a veth to the host (the pod IP), so pod-local ports are the spec's own and kubelet's
``httpGet`` probes reach the pod IP as they would on a node.

Order follows kubelet: regular init containers run to completion in order; native
sidecars (``restartPolicy: Always``) start in order and the next container waits for a
sidecar's startup probe; then the app containers start.

What it does *not* model: image pulls (an image name maps to a root file system given by
the caller: the host's, or an unpacked image), cgroups/resource limits, PID and UTS
namespaces, restarts, liveness kills, service-account admission (the caller supplies the
projected tokens), DNS (the caller supplies ``/etc/hosts`` entries, as cluster DNS would).

Needs root (netns, mounts, setpriv); :func:`require_root` fails, never skips, without it.
"""

from __future__ import annotations

import base64
import contextlib
import json
import os
import random
import re
import shlex
import subprocess
import time
import urllib.request
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

__all__ = [
    "ImageRoot",
    "PodNetwork",
    "PodRunner",
    "Sources",
    "VolumeFile",
    "materialise",
    "readable_by",
    "require_root",
]

HOST_ROOT = Path("/")

#: kubelet's defaults (pkg/volume/{secret,configmap,projected,downwardapi}).
DEFAULT_MODE = 0o644
#: With a pod fsGroup, read-only managed volumes (Secret, ConfigMap, projected) get
#: group ``fsGroup`` and at least ``0440`` (pkg/volume/volume_linux.go ``SetVolumeOwnership``).
FSGROUP_RO_MASK = 0o440


def require_root() -> None:
    if os.geteuid() != 0:
        raise RuntimeError(
            "the pod runner needs root (network namespaces, mounts, setpriv); CI runs the suite as root"
        )


@dataclass(frozen=True, slots=True)
class VolumeFile:
    """One file of a materialised volume, relative to the volume root."""

    path: str
    data: bytes
    mode: int
    uid: int = 0
    gid: int = 0


def readable_by(f: VolumeFile, uid: int, gids: Sequence[int]) -> bool:
    """The permission check the kernel makes for a read (root reads anything)."""
    if uid == 0:
        return True
    if f.uid == uid:
        return bool(f.mode & 0o400)
    if f.gid in gids:
        return bool(f.mode & 0o040)
    return bool(f.mode & 0o004)


@dataclass
class Sources:
    """What the API server would hold for the pod's namespace."""

    config_maps: dict[str, dict[str, str]] = field(default_factory=dict)
    secrets: dict[str, dict[str, bytes]] = field(default_factory=dict)
    #: (audience or None for the API server's, expiration seconds) -> a token
    token: Callable[[str | None, int], str] = lambda audience, ttl: "unset"


def _containers(pod: Mapping[str, Any]) -> list[dict[str, Any]]:
    spec = pod["spec"]
    return list(spec.get("initContainers") or []) + list(spec.get("containers") or [])


def _run_as(pod: Mapping[str, Any], c: Mapping[str, Any]) -> tuple[int, int]:
    psc = pod["spec"].get("securityContext") or {}
    csc = c.get("securityContext") or {}
    uid = csc.get("runAsUser", psc.get("runAsUser", 0))
    gid = csc.get("runAsGroup", psc.get("runAsGroup", 0))
    return int(uid), int(gid)


def supplemental_groups(pod: Mapping[str, Any]) -> list[int]:
    psc = pod["spec"].get("securityContext") or {}
    groups = [int(g) for g in psc.get("supplementalGroups") or []]
    if psc.get("fsGroup") is not None:
        groups.append(int(psc["fsGroup"]))
    return groups


def _items(
    data: Mapping[str, bytes], items: Sequence[Mapping[str, Any]] | None, mode: int, optional: bool, what: str
) -> list[VolumeFile]:
    if items:
        out = []
        for it in items:
            if it["key"] not in data:
                if optional:
                    continue
                raise KeyError(f"{what} has no key {it['key']!r}")
            out.append(VolumeFile(it["path"], data[it["key"]], int(it.get("mode", mode))))
        return out
    return [VolumeFile(k, v, mode) for k, v in sorted(data.items())]


def materialise(pod: Mapping[str, Any], volume: Mapping[str, Any], src: Sources) -> list[VolumeFile] | None:
    """The files kubelet writes for a Secret, ConfigMap or projected volume, with their
    ownership and modes; None for an emptyDir (a fresh writable directory).

    Rules: files are ``root:root`` with ``defaultMode`` (0644 unless set) or the item's
    ``mode``; with a pod ``fsGroup`` their group becomes ``fsGroup`` and their mode gains
    ``0440``. A projected service-account token is ``0600`` and owned by the pods'
    ``runAsUser`` when every container runs as the same user, else it keeps the mode above
    (kubelet's token-projection ownership rule).
    """
    fs_group = (pod["spec"].get("securityContext") or {}).get("fsGroup")
    files: list[VolumeFile] = []
    if "emptyDir" in volume:
        return None
    if "secret" in volume:
        s = volume["secret"]
        data = src.secrets.get(s["secretName"])
        if data is None:
            raise KeyError(f"Secret {s['secretName']!r} not found")
        files = _items(data, s.get("items"), int(s.get("defaultMode", DEFAULT_MODE)), bool(s.get("optional")),
                       f"Secret {s['secretName']}")
    elif "configMap" in volume:
        cm = volume["configMap"]
        cdata = src.config_maps.get(cm["name"])
        if cdata is None:
            raise KeyError(f"ConfigMap {cm['name']!r} not found")
        files = _items({k: v.encode() for k, v in cdata.items()}, cm.get("items"),
                       int(cm.get("defaultMode", DEFAULT_MODE)), bool(cm.get("optional")), f"ConfigMap {cm['name']}")
    elif "projected" in volume:
        p = volume["projected"]
        mode = int(p.get("defaultMode", DEFAULT_MODE))
        uids = {_run_as(pod, c)[0] for c in _containers(pod)}
        for source in p["sources"]:
            if "serviceAccountToken" in source:
                t = source["serviceAccountToken"]
                token = src.token(t.get("audience"), int(t.get("expirationSeconds", 3600))).encode()
                if len(uids) == 1:
                    files.append(VolumeFile(t["path"], token, 0o600, uid=uids.pop()))
                    continue
                files.append(VolumeFile(t["path"], token, mode))
            elif "configMap" in source:
                cm = source["configMap"]
                if cm["name"] not in src.config_maps:
                    raise KeyError(f"ConfigMap {cm['name']!r} not found")
                files += _items({k: v.encode() for k, v in src.config_maps[cm["name"]].items()}, cm.get("items"),
                                mode, bool(cm.get("optional")), f"ConfigMap {cm['name']}")
            elif "secret" in source:
                s = source["secret"]
                if s["name"] not in src.secrets:
                    raise KeyError(f"Secret {s['name']!r} not found")
                files += _items(src.secrets[s["name"]], s.get("items"), mode, bool(s.get("optional")),
                                f"Secret {s['name']}")
            else:
                raise NotImplementedError(f"projected source {sorted(source)}")
    else:
        raise NotImplementedError(f"volume type of {volume.get('name')!r}: {sorted(volume)}")
    if fs_group is not None:
        files = [VolumeFile(f.path, f.data, f.mode | FSGROUP_RO_MASK, f.uid, int(fs_group)) for f in files]
    return files


def _write_atomic_layout(root: Path, files: Sequence[VolumeFile], fs_group: int | None) -> None:
    """kubelet's AtomicWriter layout: ``..<ts>/`` holds the files, ``..data`` points at it,
    and each top-level name is a symlink through ``..data`` (rotation swaps ``..data``)."""
    root.mkdir(parents=True, exist_ok=True)
    os.chmod(root, 0o755)
    if fs_group is not None:
        os.chown(root, 0, fs_group)
        os.chmod(root, 0o2755)
    stamp = root / f"..{time.strftime('%Y_%m_%d_%H_%M_%S')}.{random.randrange(10**9)}"
    stamp.mkdir()
    for f in files:
        target = stamp / f.path
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes(f.data)
        os.chown(target, f.uid, f.gid)
        os.chmod(target, f.mode)
    os.symlink(stamp.name, root / "..data")
    for top in sorted({f.path.split("/", 1)[0] for f in files}):
        os.symlink(f"..data/{top}", root / top)


@dataclass(frozen=True, slots=True)
class ImageRoot:
    """What an image name stands for here: a root file system and the image's PATH."""

    rootfs: Path = HOST_ROOT
    path: str = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
    workdir: str = "/"
    #: Shell commands run as root inside the container's (overlay) root before it starts:
    #: e.g. making the host's /root traversable when the host stands in for an image whose
    #: Python lives there. They change the overlay's upper layer only, never the host.
    setup: tuple[str, ...] = ()


def secure_join(rootfs: Path, path: str) -> str:
    """``path`` inside ``rootfs`` with symlinks resolved *within* it (like runc's securejoin):
    Debian's ``/var/run -> /run`` must not send a mount to the host's ``/run``."""
    parts = [p for p in path.split("/") if p]
    out: list[str] = []
    hops = 0
    while parts:
        part = parts.pop(0)
        if part == "..":
            if out:
                out.pop()
            continue
        if part == ".":
            continue
        candidate = rootfs.joinpath(*out, part)
        if candidate.is_symlink():
            hops += 1
            if hops > 40:
                raise OSError(f"too many symlinks in {path}")
            link = os.readlink(candidate)
            if link.startswith("/"):
                out = []
            parts = [p for p in link.split("/") if p] + parts
            continue
        out.append(part)
    return "/" + "/".join(out)


def _run(argv: Sequence[str], check: bool = True) -> subprocess.CompletedProcess[str]:
    return subprocess.run(list(argv), capture_output=True, text=True, check=check, timeout=60)


class PodNetwork:
    """A network namespace for the pod with a veth to the host: ``host_ip`` <-> ``pod_ip``.
    IPv6 too (``host_ip6``/``pod_ip6``), so IPv6 behaviour can be checked."""

    def __init__(self, name: str | None = None) -> None:
        require_root()
        n = random.randrange(1 << 20)
        self.name = name or f"xp{os.getpid() % 100000}-{n}"
        self.veth = f"xpv{n:x}"[:15]
        a, b = 100 + (n >> 12) % 150, (n >> 4) % 256
        c = (n % 16) * 16
        self.host_ip, self.pod_ip = f"10.{a}.{b}.{c + 1}", f"10.{a}.{b}.{c + 2}"
        self.host_ip6, self.pod_ip6 = f"fd00:{a:x}:{b:x}:{c:x}::1", f"fd00:{a:x}:{b:x}:{c:x}::2"
        self.up = False

    def __enter__(self) -> PodNetwork:
        _run(["ip", "netns", "add", self.name])
        self.up = True
        peer = self.veth + "p"
        _run(["ip", "link", "add", self.veth, "type", "veth", "peer", "name", peer[:15]])
        _run(["ip", "link", "set", peer[:15], "netns", self.name])
        _run(["ip", "addr", "add", f"{self.host_ip}/28", "dev", self.veth])
        _run(["ip", "-6", "addr", "add", f"{self.host_ip6}/64", "dev", self.veth, "nodad"])
        _run(["ip", "link", "set", self.veth, "up"])
        ns = ["ip", "netns", "exec", self.name]
        _run([*ns, "ip", "link", "set", "lo", "up"])
        _run([*ns, "ip", "link", "set", peer[:15], "name", "eth0"])
        _run([*ns, "ip", "addr", "add", f"{self.pod_ip}/28", "dev", "eth0"])
        _run([*ns, "ip", "-6", "addr", "add", f"{self.pod_ip6}/64", "dev", "eth0", "nodad"])
        _run([*ns, "ip", "link", "set", "eth0", "up"])
        _run([*ns, "ip", "route", "add", "default", "via", self.host_ip])
        _run([*ns, "ip", "-6", "route", "add", "default", "via", self.host_ip6])
        return self

    def exec_prefix(self) -> list[str]:
        return ["ip", "netns", "exec", self.name]

    def __exit__(self, *exc: object) -> None:
        if self.up:
            _run(["ip", "link", "del", self.veth], check=False)
            _run(["ip", "netns", "del", self.name], check=False)
            self.up = False


_VAR = re.compile(r"\$\$|\$\(([A-Za-z_][A-Za-z0-9_.-]*)\)")


def expand(text: str, env: Mapping[str, str]) -> str:
    """Kubernetes' ``$(VAR)`` expansion: ``$$`` escapes, unknown references stay as written."""

    def sub(m: re.Match[str]) -> str:
        if m.group(0) == "$$":
            return "$"
        return env.get(m.group(1), m.group(0))

    return _VAR.sub(sub, text)


@dataclass
class Running:
    name: str
    popen: subprocess.Popen[bytes]
    log: Path

    def output(self) -> str:
        return self.log.read_text(errors="replace")


class PodRunner:
    """Runs ``pod`` (a full Pod object, e.g. the injector's patched output)."""

    def __init__(
        self,
        pod: Mapping[str, Any],
        sources: Sources,
        work: Path,
        net: PodNetwork,
        *,
        images: Mapping[str, ImageRoot],
        hosts: Mapping[str, str] | None = None,
        extra_files: Mapping[str, bytes] | None = None,
    ) -> None:
        require_root()
        self.pod = pod
        self.sources = sources
        self.work = work
        self.net = net
        self.images = images
        self.hosts = dict(hosts or {})
        #: Files written into every container's root (upper layer): e.g. a CA bundle the
        #: fake outside world is signed by. Path -> content.
        self.extra_files = dict(extra_files or {})
        self.running: list[Running] = []
        self.last_probe_output = ""
        self.volume_dirs: dict[str, Path] = {}
        self.namespace = str(pod.get("metadata", {}).get("namespace") or "default")

    # -- volumes ----------------------------------------------------------------------

    def prepare_volumes(self) -> None:
        fs_group = (self.pod["spec"].get("securityContext") or {}).get("fsGroup")
        for v in self.pod["spec"].get("volumes") or []:
            d = self.work / "volumes" / v["name"]
            files = materialise(self.pod, v, self.sources)
            if files is None:  # emptyDir: world-writable like kubelet's (0777), group fsGroup
                d.mkdir(parents=True)
                os.chmod(d, 0o777)
                if fs_group is not None:
                    os.chown(d, 0, int(fs_group))
                    os.chmod(d, 0o2777)
            else:
                _write_atomic_layout(d, files, None if fs_group is None else int(fs_group))
            self.volume_dirs[v["name"]] = d
        hosts = "127.0.0.1 localhost\n::1 localhost ip6-localhost\n"
        hosts += f"{self.net.pod_ip} {self.pod.get('metadata', {}).get('name', 'pod')}\n"
        hosts += "".join(f"{ip} {name}\n" for name, ip in sorted(self.hosts.items()))
        (self.work / "etc-hosts").write_text(hosts)
        (self.work / "shm").mkdir()
        os.chmod(self.work / "shm", 0o1777)

    def _mount_source(self, m: Mapping[str, Any]) -> Path:
        base = self.volume_dirs[m["name"]]
        sub = m.get("subPath")
        if not sub:
            return base
        # kubelet creates a missing subPath with the volume root's mode (and its group).
        path = base / sub
        if not path.exists():
            st = base.stat()
            path.mkdir(parents=True)
            os.chown(path, 0, st.st_gid)
            os.chmod(path, st.st_mode & 0o7777)
        return path

    # -- env --------------------------------------------------------------------------

    def env_of(self, c: Mapping[str, Any], image: ImageRoot) -> dict[str, str]:
        env: dict[str, str] = {
            "PATH": image.path,
            "HOSTNAME": str(self.pod.get("metadata", {}).get("name", "pod")),
            "KUBERNETES_SERVICE_HOST": self.hosts.get("kubernetes.default.svc", "10.96.0.1"),
            "KUBERNETES_SERVICE_PORT": "443",
        }
        for e in c.get("env") or []:
            if "value" in e:
                env[e["name"]] = expand(str(e["value"]), env)
            elif "valueFrom" in e:
                env[e["name"]] = self._value_from(c, e["valueFrom"])
            else:
                env[e["name"]] = ""
        return env

    def _value_from(self, c: Mapping[str, Any], vf: Mapping[str, Any]) -> str:
        if "secretKeyRef" in vf:
            ref = vf["secretKeyRef"]
            return self.sources.secrets[ref["name"]][ref["key"]].decode()
        if "configMapKeyRef" in vf:
            ref = vf["configMapKeyRef"]
            return self.sources.config_maps[ref["name"]][ref["key"]]
        if "fieldRef" in vf:
            path = vf["fieldRef"]["fieldPath"]
            meta = self.pod.get("metadata", {})
            known = {
                "metadata.name": meta.get("name", "pod"),
                "metadata.namespace": self.namespace,
                "status.podIP": self.net.pod_ip,
                "spec.serviceAccountName": self.pod["spec"].get("serviceAccountName", "default"),
            }
            return str(known[path])
        if "resourceFieldRef" in vf:
            ref = vf["resourceFieldRef"]
            target = next(x for x in _containers(self.pod) if x["name"] == ref.get("containerName", c["name"]))
            value = (target.get("resources") or {}).get("limits", {}).get(ref["resource"].split(".", 1)[1])
            if value is None:
                return str(os.cpu_count() or 1)
            if ref["resource"].endswith("cpu"):
                q = str(value)
                cpus = int(q[:-1]) / 1000 if q.endswith("m") else float(q)
                return str(max(1, -int(-cpus // 1)))
            return str(value)
        raise NotImplementedError(f"valueFrom {sorted(vf)}")

    # -- processes --------------------------------------------------------------------

    def _script(self, c: Mapping[str, Any], argv: Sequence[str], env: Mapping[str, str], image: ImageRoot,
                cdir: Path) -> str:
        uid, gid = _run_as(self.pod, c)
        sc = c.get("securityContext") or {}
        root = cdir / "root"
        for d in ("upper", "workdir", "root"):
            (cdir / d).mkdir(parents=True, exist_ok=True)
        q = shlex.quote
        lines = [
            "set -e",
            f"mount -t overlay overlay -o lowerdir={image.rootfs},upperdir={cdir / 'upper'},"
            f"workdir={cdir / 'workdir'} {q(str(root))}",
            f"mount -t proc proc {q(str(root / 'proc'))}",
            f"mount --rbind /dev {q(str(root / 'dev'))}",
            # The pod's own /dev/shm (its IPC namespace): Envoy keeps its shared memory there.
            f"mount --bind {q(str(self.work / 'shm'))} {q(str(root / 'dev/shm'))}",
            f"mount --rbind /sys {q(str(root / 'sys'))}",
            f"touch {q(str(root / 'etc/hosts'))}",
            f"mount --bind {q(str(self.work / 'etc-hosts'))} {q(str(root / 'etc/hosts'))}",
        ]
        for path, data in self.extra_files.items():
            target = root / secure_join(image.rootfs, path).lstrip("/")
            staged = cdir / "extra" / path.lstrip("/")
            staged.parent.mkdir(parents=True, exist_ok=True)
            staged.write_bytes(data)
            lines += [f"mkdir -p {q(str(target.parent))}", f"cp {q(str(staged))} {q(str(target))}",
                      f"chmod 0644 {q(str(target))}"]
        for m in c.get("volumeMounts") or []:
            src = self._mount_source(m)
            target = root / secure_join(image.rootfs, m["mountPath"]).lstrip("/")
            lines.append(f"mkdir -p {q(str(target))}" if src.is_dir() else f"touch {q(str(target))}")
            lines.append(f"mount --bind {q(str(src))} {q(str(target))}")
            if m.get("readOnly"):
                lines.append(f"mount -o remount,bind,ro {q(str(target))}")
        for cmd in image.setup:
            lines.append(f"chroot {q(str(root))} sh -c {q(cmd)}")
        if sc.get("readOnlyRootFilesystem"):
            lines.append(f"mount -o remount,bind,ro {q(str(root))}")
        caps = (sc.get("capabilities") or {})
        keep = [x.lower() for x in caps.get("add") or []] if uid == 0 else []
        dropped = "ALL" in (caps.get("drop") or [])
        priv = ["setpriv", f"--reuid={uid}", f"--regid={gid}"]
        priv += self._groups_arg()
        if dropped:
            bounding = "-all" + "".join(f",+{k}" for k in keep)
            priv += [f"--bounding-set={bounding}", f"--inh-caps={bounding}"]
            if keep:
                priv += [f"--ambient-caps={','.join('+' + k for k in keep)}"]
        if sc.get("allowPrivilegeEscalation") is False:
            priv.append("--no-new-privs")
        envs = [f"{k}={v}" for k, v in env.items()]
        wd = c.get("workingDir") or image.workdir
        inner = ["env", "-i", *envs, "sh", "-c", 'cd "$0" && exec "$@"', wd, *argv]
        lines.append("exec chroot " + q(str(root)) + " " + " ".join(q(x) for x in [*priv, "--", *inner]))
        return "\n".join(lines) + "\n"

    def _groups_arg(self) -> list[str]:
        groups = supplemental_groups(self.pod)
        return [f"--groups={','.join(str(g) for g in groups)}"] if groups else ["--clear-groups"]

    def start(self, c: Mapping[str, Any]) -> Running:
        image = self.images.get(c.get("image", ""))
        if image is None:
            raise KeyError(f"container {c['name']}: no root file system for image {c.get('image')!r}")
        if not c.get("command"):
            raise NotImplementedError(f"container {c['name']}: no command (image entrypoints are not modelled)")
        env = self.env_of(c, image)
        argv = [expand(a, env) for a in list(c["command"]) + list(c.get("args") or [])]
        cdir = self.work / "containers" / c["name"]
        script = cdir / "start.sh"
        cdir.mkdir(parents=True, exist_ok=True)
        script.write_text(self._script(c, argv, env, image, cdir))
        log = cdir / "log"
        with open(log, "ab") as fh:
            popen = subprocess.Popen(
                [*self.net.exec_prefix(), "unshare", "--mount", "--propagation", "private", "sh", str(script)],
                stdout=fh, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, start_new_session=True,
            )
        r = Running(c["name"], popen, log)
        self.running.append(r)
        return r

    def exec_in(self, r: Running, c: Mapping[str, Any], argv: Sequence[str], timeout: float = 10) -> int:
        return self.exec_out(r, c, argv, timeout)[0]

    def exec_out(
        self, r: Running, c: Mapping[str, Any], argv: Sequence[str], timeout: float = 10, *, uid: int | None = None
    ) -> tuple[int, str]:
        """Like ``exec_in``, with the output; ``uid`` runs as another user than the container's
        (a stand-in for another container image's user in the same pod)."""
        """``kubectl exec``-like: run ``argv`` in the container's mount and network
        namespaces, root and user (what an exec probe does)."""
        cuid, gid = _run_as(self.pod, c)
        if uid is None:
            uid = cuid
        else:
            gid = uid
        image = self.images[c["image"]]
        env = [f"{k}={v}" for k, v in self.env_of(c, image).items()]
        cmd = ["nsenter", "-t", str(r.popen.pid), "-m", "-n", "-r", "-w",
               "setpriv", f"--reuid={uid}", f"--regid={gid}", *self._groups_arg(), "--",
               "env", "-i", *env, *argv]
        try:
            done = subprocess.run(cmd, capture_output=True, timeout=timeout)
        except subprocess.TimeoutExpired:
            return -1, "timed out"
        self.last_probe_output = (done.stdout + done.stderr).decode(errors="replace")[-2000:]
        return done.returncode, self.last_probe_output

    def probe(self, r: Running, c: Mapping[str, Any], probe: Mapping[str, Any]) -> bool:
        timeout = float(probe.get("timeoutSeconds", 1))
        if "exec" in probe:
            return self.exec_in(r, c, probe["exec"]["command"], timeout) == 0
        if "httpGet" in probe:
            g = probe["httpGet"]
            port = g["port"]
            if isinstance(port, str):
                port = next(p["containerPort"] for p in c.get("ports") or [] if p.get("name") == port)
            url = f"http://{self.net.pod_ip}:{port}{g.get('path', '/')}"
            try:
                with urllib.request.urlopen(url, timeout=timeout) as resp:
                    return 200 <= resp.status < 400
            except OSError:
                return False
        if "tcpSocket" in probe:
            import socket

            try:
                socket.create_connection((self.net.pod_ip, int(probe["tcpSocket"]["port"])), timeout).close()
                return True
            except OSError:
                return False
        raise NotImplementedError(f"probe {sorted(probe)}")

    def wait_probe(self, r: Running, c: Mapping[str, Any], probe: Mapping[str, Any]) -> None:
        period = float(probe.get("periodSeconds", 10))
        attempts = int(probe.get("failureThreshold", 3))
        for _ in range(attempts):
            if r.popen.poll() is not None:
                raise ContainerFailed(r, f"exited with {r.popen.returncode} before its probe passed")
            if self.probe(r, c, probe):
                return
            time.sleep(min(period, 1.0))
        raise ContainerFailed(r, f"probe never passed (last exec probe output: {self.last_probe_output!r})")

    def run_to_completion(self, c: Mapping[str, Any], timeout: float = 120) -> Running:
        r = self.start(c)
        try:
            rc = r.popen.wait(timeout)
        except subprocess.TimeoutExpired as exc:
            raise ContainerFailed(r, "did not finish") from exc
        if rc != 0:
            raise ContainerFailed(r, f"exited with {rc}")
        return r

    def start_pod(self, *, run_apps: bool = True) -> dict[str, Running]:
        """kubelet's start sequence. Raises :class:`ContainerFailed` with the container's output."""
        self.prepare_volumes()
        out: dict[str, Running] = {}
        for c in self.pod["spec"].get("initContainers") or []:
            if c.get("restartPolicy") == "Always":
                r = self.start(c)
                if "startupProbe" in c:
                    self.wait_probe(r, c, c["startupProbe"])
                out[c["name"]] = r
            else:
                out[c["name"]] = self.run_to_completion(c)
        if run_apps:
            for c in self.pod["spec"]["containers"]:
                out[c["name"]] = self.start(c)
        return out

    def container(self, name: str) -> dict[str, Any]:
        return next(c for c in _containers(self.pod) if c["name"] == name)

    def logs(self) -> str:
        return "\n".join(f"--- {r.name} ---\n{r.output()[-4000:]}" for r in self.running)

    def stop(self) -> None:
        for r in reversed(self.running):
            if r.popen.poll() is None:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(r.popen.pid, 15)
        for r in reversed(self.running):
            try:
                r.popen.wait(10)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(r.popen.pid, 9)
                r.popen.wait(5)


class ContainerFailed(RuntimeError):
    def __init__(self, r: Running, why: str) -> None:
        super().__init__(f"container {r.name} {why}:\n{r.output()[-4000:]}")
        self.running = r


@contextlib.contextmanager
def running_pod(runner: PodRunner, *, run_apps: bool = True) -> Iterator[dict[str, Running]]:
    try:
        yield runner.start_pod(run_apps=run_apps)
    finally:
        runner.stop()


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def dump(obj: Any) -> str:
    return json.dumps(obj, indent=1, sort_keys=True)
