"""Push and pull through a real docker-registry: round trips, only-what-is-missing on the
wire (counted in the registry's access log), chunked uploads, cross-repository mounts,
and skopeo/umoci reading what lamina pushed and lamina reading what skopeo pushed."""

from __future__ import annotations

import json
import os
import subprocess
from dataclasses import replace
from pathlib import Path

import pytest
from registry_servers import DockerRegistry, count, pull_image, push_image

from lamina.image.manifest import Platform, build_index, current_platform
from lamina.image.reference import Reference
from lamina.store.store import Store
from lamina.transport.copy import CopyEvent, CopyOptions
from lamina.transport.local import StoreTransport
from lamina.transport.registry import BlobPush, RegistryOptions, RegistrySink, RegistrySource
from lamina_testing import Lamina, need, tree_listing


def ref(registry: DockerRegistry, repo: str, tag: str = "latest") -> Reference:
    return Reference.parse(f"{registry.host}/{repo}:{tag}")


def push(lam: Lamina, name: str, dest: Reference, opts: RegistryOptions = RegistryOptions(),
         **kw: object) -> list[BlobPush]:
    events: list[BlobPush] = []
    with Store(lam.root) as store:
        push_image(store, name, dest, opts, on_blob=events.append, **kw)  # type: ignore[arg-type]
    return events


def pull(lam: Lamina, src: Reference, opts: RegistryOptions = RegistryOptions()
         ) -> list[CopyEvent]:
    events: list[CopyEvent] = []
    with Store(lam.root) as store:
        pull_image(store, src, opts, CopyOptions(on_event=events.append, jobs=3))
    return [e for e in events if e.kind != "progress"]


def test_push_then_pull_round_trip(seeded: Lamina, make_lamina: object, registry: DockerRegistry,
                                   tmp_path: Path) -> None:
    dest = ref(registry, "rt/a", "v1")
    fates = push(seeded, "demo/a", dest)
    assert sorted(p.kind for p in fates) == ["pushed"] * 5          # config + 4 layers
    other = Lamina(tmp_path / "other", tmp_path)
    pull(other, dest)
    mine = seeded.run("inspect", "demo/a").json()
    theirs = other.run("inspect", f"{registry.host}/rt/a:v1").json()
    for key in ("Id", "RootFS"):
        assert mine[0][key] == theirs[0][key]
    seeded.run("unpack", "demo/a", tmp_path / "mine")
    other.run("unpack", f"{registry.host}/rt/a:v1", tmp_path / "theirs")
    assert tree_listing(tmp_path / "mine") == tree_listing(tmp_path / "theirs")
    other.assert_consistent()
    # --insecure tries TLS first, then falls back to plain http (Docker's behaviour)
    third = Lamina(tmp_path / "third", tmp_path)
    pull(third, dest, RegistryOptions(insecure=True))
    # pushing the same image again moves no blob at all
    again = push(seeded, "demo/a", dest)
    assert sorted(p.kind for p in again) == ["exists"] * 5


def test_b_after_a_moves_only_the_new_layer(seeded: Lamina, registry: DockerRegistry,
                                            tmp_path: Path) -> None:
    repo = "seed/ab"
    push(seeded, "demo/a", ref(registry, repo, "a"))
    before = registry.requests(repo)
    assert count(before, "PUT", r"/blobs/uploads/") == 5
    fates = push(seeded, "demo/b", ref(registry, repo, "b"))
    reqs = registry.requests(repo)[len(before):]
    # exactly B's new layer and its config are uploaded, then its manifest
    assert count(reqs, "POST", r"/blobs/uploads/") == 2
    assert count(reqs, "PUT", r"/blobs/uploads/") == 2
    assert count(reqs, "PATCH", r"/blobs/uploads/") == 0
    assert count(reqs, "PUT", r"/manifests/") == 1
    assert sorted(p.kind for p in fates) == ["exists"] * 3 + ["pushed"] * 2

    # a store holding A pulls B: one layer and the config come over the wire
    other = Lamina(tmp_path / "other", tmp_path)
    pull(other, ref(registry, repo, "a"))
    mark = len(registry.requests(repo))
    events = pull(other, ref(registry, repo, "b"))
    reqs = registry.requests(repo)[mark:]
    assert count(reqs, "GET", r"/blobs/sha256:") == 2
    assert count(reqs, "GET", r"/manifests/") == 1
    assert sorted(e.kind for e in events if e.kind != "start") == ["done"] * 2 + ["exists"] * 3
    other.assert_consistent()


def test_chunked_upload(seeded: Lamina, registry: DockerRegistry,
                                       tmp_path: Path) -> None:
    dest = ref(registry, "chunked/a")
    fates = push(seeded, "demo/a", dest, RegistryOptions(chunk_size=256 * 1024))
    big = [p for p in fates if p.size > 256 * 1024]
    assert big and all(p.chunks == -(-p.size // (256 * 1024)) for p in big)
    reqs = registry.requests("chunked/a")
    # every chunk but the last is a PATCH; the last travels with the closing PUT
    assert count(reqs, "PATCH", r"/blobs/uploads/") == sum(p.chunks - 1 for p in fates)
    other = Lamina(tmp_path / "other", tmp_path)
    pull(other, dest)
    other.assert_consistent()


def test_cross_repository_mount(seeded: Lamina, registry: DockerRegistry) -> None:
    push(seeded, "demo/a", ref(registry, "mount/src"))
    mark = len(registry.requests("mount/dst"))
    fates = push(seeded, "demo/a", ref(registry, "mount/dst"),
                 mount_from=lambda desc: "mount/src")
    assert sorted(p.kind for p in fates) == ["mounted"] * 5
    assert all(p.mounted_from == "mount/src" for p in fates)
    reqs = registry.requests("mount/dst")[mark:]
    assert count(reqs, "POST", r"mount=sha256") == 5
    assert count(reqs, "PUT", r"/blobs/uploads/") == 0


def test_skopeo_and_umoci_read_what_lamina_pushed(seeded: Lamina, registry: DockerRegistry,
                                                  tmp_path: Path) -> None:
    skopeo = need("skopeo")
    with Store(seeded.root) as store:
        top = push_image(store, "demo/b", ref(registry, "interop/b", "v2"))
    url = f"docker://{registry.host}/interop/b:v2"
    info = json.loads(subprocess.run([skopeo, "inspect", "--tls-verify=false", url],
                                     check=True, capture_output=True, text=True).stdout)
    assert info["Digest"] == str(top.digest)
    assert len(info["Layers"]) == 4
    layout = tmp_path / "layout"
    subprocess.run([skopeo, "copy", "--src-tls-verify=false", url, f"oci:{layout}:v2"],
                   check=True, capture_output=True)
    umoci = need("umoci")
    rootless = [] if os.geteuid() == 0 else ["--rootless"]
    subprocess.run([umoci, "unpack", *rootless, "--image", f"{layout}:v2", tmp_path / "bundle"],
                   check=True, capture_output=True)
    seeded.run("unpack", "demo/b", tmp_path / "mine")
    assert tree_listing(tmp_path / "bundle" / "rootfs") == tree_listing(tmp_path / "mine")


@pytest.mark.parametrize("fmt", ["oci", "v2s2"])
def test_lamina_pulls_what_skopeo_pushed(seeded: Lamina, registry: DockerRegistry,
                                         tmp_path: Path, fmt: str) -> None:
    skopeo = need("skopeo")
    layout = tmp_path / "layout"
    seeded.run("save", "demo/a", "-o", layout, "--format", "oci")
    repo = f"skopeo/{fmt}"
    subprocess.run([skopeo, "copy", "--dest-tls-verify=false", "--format", fmt,
                    f"oci:{layout}:latest", f"docker://{registry.host}/{repo}:x"],
                   check=True, capture_output=True)
    src = RegistrySource(ref(registry, repo, "x"))
    desc = src.resolve(None)
    src.close()
    assert desc.media_type == ("application/vnd.oci.image.manifest.v1+json" if fmt == "oci"
                               else "application/vnd.docker.distribution.manifest.v2+json")
    other = Lamina(tmp_path / "other", tmp_path)
    pull(other, ref(registry, repo, "x"))
    other.run("unpack", f"{registry.host}/{repo}:x", tmp_path / "theirs")
    seeded.run("unpack", "demo/a", tmp_path / "mine")
    assert tree_listing(tmp_path / "mine") == tree_listing(tmp_path / "theirs")
    other.assert_consistent()
    with Store(other.root) as store:
        assert StoreTransport(store).resolve(f"{registry.host}/{repo}:x").digest == desc.digest


def test_index_push_and_pull(seeded: Lamina, registry: DockerRegistry, tmp_path: Path) -> None:
    """An index (two platforms) goes up with its children by digest; a pull takes this
    machine's platform, or every platform with all_platforms."""
    repo = "multi/app"
    with Store(seeded.root) as store:
        a = push_image(store, "demo/a", Reference.parse(f"{registry.host}/{repo}:a"))
        b = push_image(store, "demo/b", Reference.parse(f"{registry.host}/{repo}:b"))
    here = current_platform()
    index = build_index([replace(a, platform=here),
                         replace(b, platform=Platform("s390x", "linux"))])
    sink = RegistrySink(ref(registry, repo, "multi"))
    sink.put_manifest(index.descriptor(), index.raw, [str(ref(registry, repo, "multi"))])
    sink.close()
    one = Lamina(tmp_path / "one", tmp_path)
    with Store(one.root) as store:
        top = pull_image(store, ref(registry, repo, "multi"))
    assert top.digest == a.digest
    every = Lamina(tmp_path / "every", tmp_path)
    with Store(every.root) as store:
        top = pull_image(store, ref(registry, repo, "multi"),
                         copy_opts=CopyOptions(all_platforms=True, jobs=2))
        assert top.digest == index.digest
        assert store.meta.get_tag(str(ref(registry, repo, "multi"))).digest == str(index.digest)
        for d in (a, b):
            assert store.blobs.has(d.digest)
    every.assert_consistent()
