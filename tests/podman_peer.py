"""Podman as a peer, for the tests and benchmarks: ``podman`` with a storage of its own
in one directory (never the machine's), set up for partial pulls of zstd:chunked layers
from one plain-HTTP registry.

Facts it is built on:
- containers/storage reads the pull options (``enable_partial_images`` …) from
  storage.conf only (``CONTAINERS_STORAGE_CONF``; Debian 12's v1.43:
  pkg/chunked/storage_linux.go ApplyDiff), not from ``--root``/``--storage-opt``;
- podman refuses a run root longer than 50 characters: keep ``work`` short
  (``tempfile.mkdtemp`` under /tmp);
- with ``DOCKER_CONFIG`` set podman stats its config.json and fails when it is missing:
  an empty ``REGISTRY_AUTH_FILE`` is given instead;
- nothing here runs a container, so no OCI runtime (runc/crun) is involved.  As root,
  containers/image still records blob locations in /var/lib/containers/cache (its blob
  info cache; podman 4.3 has no option to move it).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path


class Podman:
    """``podman`` confined to ``work``: graph root, run root, libpod's tmpdir, TMPDIR,
    storage.conf (overlay; partial pulls on unless ``partial`` is False), registries.conf
    (``registry`` is insecure: plain HTTP), an empty auth file and an accept-anything
    signature policy."""

    def __init__(self, work: Path, registry: str, binary: str = "podman",
                 partial: bool = True) -> None:
        self.work = work
        self.binary = binary
        root, run, tmp = work / "root", work / "run", work / "tmp"
        for d in (root, run, tmp):
            d.mkdir(parents=True)
        # containers/storage 1.43 pkg/chunked/storage_linux.go ApplyDiff reads these three
        # pull options (parseBooleanPullOption, "ostree_repos") from storage.conf.
        enable = "true" if partial else "false"
        (work / "storage.conf").write_text(
            f'[storage]\ndriver = "overlay"\ngraphroot = "{root}"\nrunroot = "{run}"\n\n'
            f'[storage.options]\npull_options = {{enable_partial_images = "{enable}", '
            'use_hard_links = "false", ostree_repos = ""}\n')
        (work / "registries.conf").write_text(
            f'unqualified-search-registries = []\n\n[[registry]]\nlocation = "{registry}"\n'
            'insecure = true\n')
        (work / "policy.json").write_text(
            json.dumps({"default": [{"type": "insecureAcceptAnything"}]}))
        (work / "containers.conf").write_text("")
        (work / "auth.json").write_text('{"auths": {}}')
        self.env = {**os.environ, "CONTAINERS_STORAGE_CONF": str(work / "storage.conf"),
                    "CONTAINERS_REGISTRIES_CONF": str(work / "registries.conf"),
                    "CONTAINERS_CONF": str(work / "containers.conf"), "TMPDIR": str(tmp),
                    "REGISTRY_AUTH_FILE": str(work / "auth.json")}
        self.env.pop("DOCKER_CONFIG", None)   # podman stats its config.json if it is set
        self.base = [self.binary, "--root", str(root), "--runroot", str(run), "--tmpdir",
                     str(tmp), "--storage-driver", "overlay", "--cgroup-manager", "cgroupfs",
                     "--events-backend", "none"]

    def run(self, *args: str) -> subprocess.CompletedProcess[str]:
        proc = subprocess.run([*self.base, *args], capture_output=True, text=True,
                              env=self.env, timeout=120)
        if proc.returncode != 0:
            raise AssertionError(f"podman {' '.join(args)} failed ({proc.returncode}):\n"
                                 f"{proc.stdout}\n{proc.stderr[-4000:]}")
        return proc

    def pull(self, ref: str, debug: bool = True) -> str:
        """Pull ``ref``; returns podman's log (``debug``: its debug log, for failure
        messages and "Missing N bytes out of M")."""
        return self.run(*(["--log-level=debug"] if debug else []), "pull", "--quiet",
                        "--signature-policy", str(self.work / "policy.json"), ref).stderr

    def mount(self, ref: str) -> Path:
        return Path(self.run("image", "mount", ref).stdout.strip())

    def close(self) -> None:
        """Unmount everything under ``work`` (podman's image mounts first, then anything
        left, deepest first), then remove it."""
        subprocess.run([*self.base, "image", "unmount", "--all", "--force"],
                       capture_output=True, env=self.env, timeout=60, check=False)
        prefix = str(self.work) + "/"
        for _ in range(3):
            with open("/proc/self/mountinfo") as f:
                points = [line.split()[4] for line in f]
            left = sorted((p for p in points if p.startswith(prefix)), key=len, reverse=True)
            if not left:
                break
            for point in left:
                subprocess.run(["umount", "-l", point], capture_output=True, check=False)
        shutil.rmtree(self.work, ignore_errors=True)
