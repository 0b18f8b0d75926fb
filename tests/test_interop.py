"""lamina's OCI layouts and archives with real peers: umoci and skopeo, both ways."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import pytest

from lamina_testing import Lamina, need, seed_sources, tree_listing


def sh(*args: str | Path, **kw: object) -> str:
    proc = subprocess.run([str(a) for a in args], capture_output=True, text=True, **kw)  # type: ignore[call-overload]
    assert proc.returncode == 0, f"{args} failed:\n{proc.stdout}\n{proc.stderr}"
    return str(proc.stdout)


def umoci_unpack(layout: Path, tag: str, bundle: Path) -> Path:
    umoci = need("umoci")
    rootless = [] if os.geteuid() == 0 else ["--rootless"]
    sh(umoci, "unpack", *rootless, "--image", f"{layout}:{tag}", bundle)
    return bundle / "rootfs"


@pytest.fixture
def seeded(lamina: Lamina, seed: Path) -> Lamina:
    lamina.run("import", "demo/a", *seed_sources(seed, "a"))
    lamina.run("import", "demo/b", *seed_sources(seed, "b"))
    return lamina


def test_umoci_unpacks_lamina_layout(seeded: Lamina, tmp_path: Path) -> None:
    layout = tmp_path / "layout"
    seeded.run("save", "demo/a", "demo/b", "-o", layout, "--format", "oci")
    index = json.loads((layout / "index.json").read_text())
    names = {m["annotations"]["io.containerd.image.name"]: m["annotations"][
        "org.opencontainers.image.ref.name"] for m in index["manifests"]}
    # both are "latest": a bare tag would be ambiguous, so each carries its reference
    assert names == {"docker.io/demo/a:latest": "demo/a:latest",
                     "docker.io/demo/b:latest": "demo/b:latest"}
    for img in ("a", "b"):
        rootfs = umoci_unpack(layout, f"demo/{img}:latest", tmp_path / f"bundle-{img}")
        seeded.run("unpack", f"demo/{img}", tmp_path / f"mine-{img}")
        assert tree_listing(rootfs) == tree_listing(tmp_path / f"mine-{img}")
    # a single image keeps the plain tag skopeo and umoci expect
    single = tmp_path / "single"
    seeded.run("save", "demo/b", "-o", single, "--format", "oci")
    assert json.loads((single / "index.json").read_text())["manifests"][0]["annotations"][
        "org.opencontainers.image.ref.name"] == "latest"
    # and lamina loads the two back under their names
    other = Lamina(tmp_path / "other", tmp_path)
    assert sorted(other.run("load", layout).out.splitlines()) == [
        "Loaded image: demo/a:latest", "Loaded image: demo/b:latest"]


def test_skopeo_reads_and_copies_lamina_layouts(seeded: Lamina, tmp_path: Path) -> None:
    skopeo = need("skopeo")
    layout = tmp_path / "layout"
    seeded.run("save", "demo/a", "-o", layout, "--format", "oci")
    info = json.loads(sh(skopeo, "inspect", f"oci:{layout}:latest"))
    doc = seeded.run("inspect", "demo/a").json()[0]
    assert info["Layers"] == [x["digest"] for x in doc["Manifest"]["layers"]]
    assert info["Digest"] == doc["Digest"]
    archive = tmp_path / "a.oci.tar"
    seeded.run("save", "demo/a", "-o", archive, "--format", "oci-archive")
    info2 = json.loads(sh(skopeo, "inspect", f"oci-archive:{archive}:latest"))
    assert info2["Digest"] == doc["Digest"]
    # skopeo copies lamina's layout to a layout and a docker archive; lamina loads both
    sh(skopeo, "copy", f"oci:{layout}:latest", f"oci:{tmp_path / 'copy'}:v1")
    sh(skopeo, "copy", f"oci:{layout}:latest",
       f"docker-archive:{tmp_path / 'd.tar'}:skopeo/made:v2")
    loaded = seeded.run("load", "--name", "copied/app", tmp_path / "copy").out
    assert loaded.strip() == "Loaded image: copied/app:v1"
    loaded = seeded.run("load", tmp_path / "d.tar").out
    assert loaded.strip() == "Loaded image: skopeo/made:v2"
    for ref in ("copied/app:v1", "skopeo/made:v2"):
        target = tmp_path / ref.replace("/", "_")
        seeded.run("unpack", ref, target)
        assert tree_listing(target) == tree_listing(tmp_path.parent / "x") or True
    a_root = tmp_path / "a_root"
    seeded.run("unpack", "demo/a", a_root)
    for ref in ("copied/app:v1", "skopeo/made:v2"):
        assert tree_listing(tmp_path / ref.replace("/", "_")) == tree_listing(a_root)
    # the layout copy keeps digests: same manifest as demo/a
    assert seeded.run("inspect", "copied/app:v1").json()[0]["Digest"] == doc["Digest"]
    seeded.assert_consistent()


def test_skopeo_accepts_lamina_docker_archives(seeded: Lamina, tmp_path: Path) -> None:
    skopeo = need("skopeo")
    archive = tmp_path / "a.tar"
    seeded.run("save", "demo/a", "-o", archive)
    info = json.loads(sh(skopeo, "inspect", f"docker-archive:{archive}"))
    doc = seeded.run("inspect", "demo/a").json()[0]
    assert info["Layers"] == doc["RootFS"]["Layers"]  # uncompressed: digest = diff_id
    sh(skopeo, "copy", f"docker-archive:{archive}", f"oci:{tmp_path / 'out'}:x")
    other = Lamina(tmp_path / "other-store", tmp_path)
    assert other.run("load", "--name", "back", tmp_path / "out").out.strip() == \
        "Loaded image: back:x"
    assert other.run("inspect", "back:x").json()[0]["Id"] == doc["Id"]


def _umoci_layout(tmp_path: Path) -> Path:
    """A layout umoci made: deletions, an opaque directory, hardlinks, symlinks."""
    umoci = need("umoci")
    rootless = [] if os.geteuid() == 0 else ["--rootless"]
    layout = tmp_path / "umoci-layout"
    sh(umoci, "init", "--layout", layout)
    sh(umoci, "new", "--image", f"{layout}:base")
    bundle = tmp_path / "ub"
    sh(umoci, "unpack", *rootless, "--image", f"{layout}:base", bundle)
    root = bundle / "rootfs"
    (root / "etc" / "conf.d").mkdir(parents=True)
    (root / "etc" / "conf.d" / "a.conf").write_text("a\n")
    (root / "etc" / "conf.d" / "b.conf").write_text("b\n")
    (root / "etc" / "gone.txt").write_text("soon deleted\n")
    (root / "opt" / "old").mkdir(parents=True)
    (root / "opt" / "old" / "x").write_text("x\n")
    (root / "bin").mkdir()
    (root / "bin" / "tool").write_bytes(b"#!/bin/sh\necho tool\n")
    os.chmod(root / "bin" / "tool", 0o4755)
    os.link(root / "bin" / "tool", root / "bin" / "tool-link")
    os.symlink("tool", root / "bin" / "alias")
    os.symlink("/etc/conf.d/a.conf", root / "etc" / "abs-link")
    sh(umoci, "repack", "--image", f"{layout}:v1", bundle)
    # v2: delete a file and a directory, change one
    (root / "etc" / "gone.txt").unlink()
    (root / "etc" / "conf.d" / "b.conf").unlink()
    (root / "etc" / "conf.d" / "a.conf").write_text("a, changed\n")
    sh(umoci, "repack", "--image", f"{layout}:v2", bundle)
    # v3: replace /opt wholesale (opaque whiteout), and white out /bin/alias
    newopt = tmp_path / "newopt"
    newopt.mkdir()
    (newopt / "fresh").write_text("fresh\n")
    sh(umoci, "insert", "--image", f"{layout}:v2", "--tag", "v3", "--opaque", newopt, "/opt")
    sh(umoci, "insert", "--image", f"{layout}:v3", "--whiteout", "/bin/alias")
    return layout


def test_lamina_loads_umoci_layout(lamina: Lamina, tmp_path: Path) -> None:
    layout = _umoci_layout(tmp_path)
    out = lamina.run("load", "--name", "umoci/img", layout).out.splitlines()
    assert set(out) == {f"Loaded image: umoci/img:{t}" for t in ("base", "v1", "v2", "v3")}
    for tag in ("v1", "v2", "v3"):
        theirs = umoci_unpack(layout, tag, tmp_path / f"theirs-{tag}")
        mine = tmp_path / f"mine-{tag}"
        lamina.run("unpack", f"umoci/img:{tag}", mine)
        assert tree_listing(mine) == tree_listing(theirs), tag
    v3 = tree_listing(tmp_path / "mine-v3")
    assert "opt/old" not in v3 and "opt/fresh" in v3
    assert "bin/alias" not in v3 and "etc/gone.txt" not in v3
    assert os.stat(tmp_path / "mine-v1/bin/tool").st_ino == \
        os.stat(tmp_path / "mine-v1/bin/tool-link").st_ino
    assert os.stat(tmp_path / "mine-v1/bin/tool").st_mode & 0o4000
    lamina.assert_consistent()
