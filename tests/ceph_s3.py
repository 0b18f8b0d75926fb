"""A real S3 for the tests and benchmarks: a one-node Ceph (one monitor, one OSD with
BlueStore on a sparse file, one RADOS Gateway) from Debian's packages (``ceph-mon
ceph-osd radosgw ceph-common``), everything under one directory and on 127.0.0.1.

Facts it is built on (each found the hard way):
- auth is off, and Debian's radosgw would insist on a "secure" monitor connection that
  cannot work then (it retries forever with -13): ``ms mon client mode = crc``;
- monitor commands wait ~1 s each by default: ``paxos propose interval`` is lowered, and
  the gateway's pools are created (one ``ceph`` session) while the OSD formats itself,
  so the first CreateBucket does not spend ~4 s creating them;
- ``bluestore block path`` is left unset (BlueStore then makes a sparse ``block`` file);
- no mgr is needed for S3; the OSD's memory is capped (``osd memory target``);
- stop in order: gateway, OSD, monitor (all at once takes ~12 s).

Daemons run in their own process groups (``start_new_session``) and their pids are
kept in ``run/pids``; ``stop`` ends them gateway first.  ``watchdog`` (a detached
process) stops them once every process registered as a user has died, so an
interrupted test run leaves nothing behind.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import uuid
from dataclasses import dataclass
from pathlib import Path

ACCESS_KEY = "laminatestaccess"
SECRET_KEY = "laminatestsecret0123456789"
REGION = "us-east-1"
TOOLS = ("ceph-mon", "ceph-osd", "radosgw", "ceph", "ceph-authtool", "monmaptool",
         "radosgw-admin")
POOLS = (".rgw.root", "default.rgw.log", "default.rgw.control", "default.rgw.meta",
         "default.rgw.buckets.index", "default.rgw.buckets.data",
         "default.rgw.buckets.non-ec")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def missing_tools() -> list[str]:
    return [t for t in TOOLS if shutil.which(t) is None]


@dataclass(frozen=True)
class Gateway:
    endpoint: str
    region: str = REGION
    access_key: str = ACCESS_KEY
    secret_key: str = SECRET_KEY

    def env(self) -> dict[str, str]:
        """The AWS environment variables that point a client here."""
        return {"AWS_ENDPOINT_URL": self.endpoint, "AWS_REGION": self.region,
                "AWS_ACCESS_KEY_ID": self.access_key,
                "AWS_SECRET_ACCESS_KEY": self.secret_key}


def _conf(d: Path, fsid: str, mon_port: int, rgw_port: int) -> str:
    return f"""[global]
fsid = {fsid}
mon host = v2:127.0.0.1:{mon_port}
mon initial members = a
ms bind msgr1 = false
public addr = 127.0.0.1
auth cluster required = none
auth service required = none
auth client required = none
ms mon client mode = crc
run dir = {d}/run
admin socket = {d}/run/$name.asok
log file = {d}/log/$name.log
keyring = {d}/keyring
osd pool default size = 1
osd pool default min size = 1
osd pool default pg num = 8
osd pool default pgp num = 8
osd pool default pg autoscale mode = off
mon allow pool size one = true
paxos propose interval = 0.05
paxos min wait = 0.01
mon allow pool delete = true
mon warn on pool no redundancy = false
mon max pg per osd = 1000
osd crush chooseleaf type = 0
mon data = {d}/mon/$name
osd data = {d}/osd/$id
[osd]
osd objectstore = bluestore
bluestore block create = true
bluestore block size = 8589934592
bluestore fsck on mkfs = false
osd memory target = 939524096
[client.rgw]
rgw data = {d}/rgw
rgw frontends = beast endpoint=127.0.0.1:{rgw_port}
rgw thread pool size = 64
rgw enable usage log = false
"""


class Ceph:
    """The cluster under ``root``."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.conf = root / "ceph.conf"
        self.pids = root / "run" / "pids"

    def _run(self, *args: str, timeout: float = 120, stdin: str | None = None) -> str:
        proc = subprocess.run(list(args), capture_output=True, text=True, timeout=timeout,
                              input=stdin)
        if proc.returncode != 0:
            raise RuntimeError(f"{' '.join(args[:3])} failed: {proc.stderr[-2000:]}")
        return proc.stdout

    def _daemon(self, name: str, *args: str) -> subprocess.Popen[bytes]:
        with open(self.root / "log" / f"{name}.out", "ab") as out:
            proc = subprocess.Popen([*args, "-f"], stdin=subprocess.DEVNULL, stdout=out,
                                    stderr=subprocess.STDOUT, start_new_session=True)
        with open(self.pids, "a") as f:
            f.write(f"{proc.pid} {name}\n")
        return proc

    def start(self, rgw_port: int) -> Gateway:
        d = self.root
        for sub in ("run", "log", "mon", "osd/0", "rgw"):
            (d / sub).mkdir(parents=True, exist_ok=True)
        fsid = str(uuid.uuid4())
        mon_port = free_port()
        self.conf.write_text(_conf(d, fsid, mon_port, rgw_port))
        c = ("-c", str(self.conf))
        try:
            self._run("ceph-authtool", "--create-keyring", str(d / "keyring"), "--gen-key",
                      "-n", "mon.", "--cap", "mon", "allow *")
            self._run("monmaptool", "--create", "--fsid", fsid, "--addv", "a",
                      f"[v2:127.0.0.1:{mon_port}]", str(d / "monmap"))
            self._run("ceph-mon", *c, "--mkfs", "-i", "a", "--monmap", str(d / "monmap"),
                      "--keyring", str(d / "keyring"))
            self._daemon("mon", "ceph-mon", *c, "-i", "a")
            for _ in range(100):
                if subprocess.run(["ceph", *c, "--connect-timeout", "5", "mon", "stat"],
                                  capture_output=True, timeout=30).returncode == 0:
                    break
                time.sleep(0.2)
            osd_uuid = str(uuid.uuid4())
            osd_id = self._run("ceph", *c, "--connect-timeout", "30", "osd", "new",
                               osd_uuid).strip()
            with open(d / "log" / "osd-mkfs.out", "ab") as out:
                mkfs = subprocess.Popen(["ceph-osd", *c, "-i", osd_id, "--mkfs",
                                         "--osd-uuid", osd_uuid], stdout=out,
                                        stderr=subprocess.STDOUT)
            # the gateway's pools, in one ceph session, while the OSD formats itself
            script = "".join(f"osd pool create {p} 8 8\nosd pool application enable {p} rgw\n"
                             for p in POOLS)
            self._run("ceph", *c, "--connect-timeout", "30", stdin=script)
            if mkfs.wait(180) != 0:
                raise RuntimeError(f"ceph-osd --mkfs failed; see {d}/log/osd-mkfs.out")
            self._daemon("osd", "ceph-osd", *c, "-i", osd_id)
            user = subprocess.Popen(
                ["radosgw-admin", *c, "user", "create", "--uid=lamina",
                 "--display-name=lamina", f"--access-key={ACCESS_KEY}",
                 f"--secret-key={SECRET_KEY}"], stdout=subprocess.DEVNULL,
                stderr=subprocess.PIPE)
            gw = self.start_gateway(rgw_port, "rgw")
            if user.wait(180) != 0:
                raise RuntimeError("radosgw-admin user create failed: "
                                   f"{user.stderr.read().decode()[-1000:] if user.stderr else ''}")
            if user.stderr:
                user.stderr.close()
            return gw
        except BaseException:
            self.stop()
            raise

    def start_gateway(self, port: int, name: str) -> Gateway:
        """A radosgw on ``port`` (another one beside the first: its own admin socket and
        log), waited for until it answers HTTP."""
        d = self.root
        proc = self._daemon(name, "radosgw", "-c", str(self.conf), "-n", "client.rgw",
                            f"--rgw-frontends=beast endpoint=127.0.0.1:{port}",
                            f"--admin-socket={d}/run/{name}.asok",
                            f"--log-file={d}/log/{name}.log")
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            if proc.poll() is not None:
                raise RuntimeError(f"radosgw {name} died; see {d}/log/{name}.log")
            with contextlib.suppress(OSError), socket.create_connection(
                    ("127.0.0.1", port), timeout=1):
                return Gateway(f"http://127.0.0.1:{port}")
            time.sleep(0.1)
        raise RuntimeError(f"radosgw {name} did not answer on port {port}")

    def stop_gateway(self, name: str) -> None:
        self._stop_named({name})

    def _entries(self) -> list[tuple[int, str]]:
        try:
            text = self.pids.read_text()
        except FileNotFoundError:
            return []
        return [(int(p), n) for p, n in (line.split() for line in text.splitlines() if line)]

    def _stop_named(self, names: set[str] | None) -> None:
        entries = self._entries()
        # gateways first, then the OSD, then the monitor (reverse start order)
        for pid, name in reversed(entries):
            if names is None or name in names:
                _stop_group(pid)
        keep = [(p, n) for p, n in entries if names is not None and n not in names]
        if self.pids.parent.is_dir():
            self.pids.write_text("".join(f"{p} {n}\n" for p, n in keep))

    def stop(self) -> None:
        self._stop_named(None)
        with contextlib.suppress(FileNotFoundError):
            self.pids.unlink()

    def running(self) -> bool:
        entries = self._entries()
        return bool(entries) and all(_alive(p) for p, _ in entries)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    # a zombie child of ours counts as gone
    with contextlib.suppress(ChildProcessError):
        if os.waitpid(pid, os.WNOHANG)[0] == pid:
            return False
    return True


def _stop_group(pid: int, grace: float = 10) -> None:
    """SIGTERM the daemon's process group, wait up to ``grace`` s, then SIGKILL."""
    for sig in (signal.SIGTERM, signal.SIGKILL):
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(pid, sig)
        deadline = time.monotonic() + grace
        while time.monotonic() < deadline:
            if not _alive(pid):
                return
            time.sleep(0.05)


WATCHDOG = """
import os, sys, time
sys.path.insert(0, {tests!r})
from ceph_s3 import Ceph, _alive
from pathlib import Path
root = Path({root!r}); users = root / "users"
ceph = Ceph(root)
while True:
    time.sleep(1)
    try:
        pids = [int(x) for x in users.read_text().split()]
    except FileNotFoundError:
        pids = []
    if not ceph.pids.exists():
        sys.exit(0)
    if not any(_alive(p) for p in pids):
        ceph.stop()
        sys.exit(0)
"""


def watchdog(root: Path) -> None:
    """A detached process that stops the cluster once no registered user is alive."""
    code = WATCHDOG.format(tests=str(Path(__file__).parent), root=str(root))
    with open(root / "log" / "watchdog.out", "ab") as out:
        subprocess.Popen([sys.executable, "-c", code], stdin=subprocess.DEVNULL, stdout=out,
                         stderr=subprocess.STDOUT, start_new_session=True)
