"""Bad input through the CLI: one clear line, exit ≠ 0, nothing half-written anywhere."""

from __future__ import annotations

import gzip
import io
import json
import shutil
import tarfile
from pathlib import Path

import pytest

from lamina_testing import Lamina, seed_sources


@pytest.fixture
def layout(lamina: Lamina, seed: Path, tmp_path: Path) -> Path:
    """A good OCI layout of demo/a, made in a scratch store."""
    scratch = Lamina(tmp_path / "scratch", tmp_path)
    scratch.run("import", "demo/a", *seed_sources(seed, "a"))
    out = tmp_path / "layout"
    scratch.run("save", "demo/a", "-o", out, "--format", "oci")
    return out


def _manifest(layout: Path) -> tuple[Path, dict]:
    index = json.loads((layout / "index.json").read_text())
    path = layout / "blobs/sha256" / index["manifests"][0]["digest"].split(":")[1]
    return path, json.loads(path.read_text())


def _blob(layout: Path, digest: str) -> Path:
    return layout / "blobs/sha256" / digest.split(":")[1]


def test_corrupt_layer_blob_is_refused(lamina: Lamina, layout: Path) -> None:
    _, manifest = _manifest(layout)
    blob = _blob(layout, manifest["layers"][3]["digest"])
    data = bytearray(blob.read_bytes())
    data[len(data) // 2] ^= 0xFF
    blob.write_bytes(bytes(data))
    res = lamina.fail("load", layout)
    assert res.code == 4
    assert manifest["layers"][3]["digest"] in res.err and "corrupt" in res.err
    assert lamina.blob_files() == set()  # what it had copied before the bad blob is gone
    assert lamina.run("images", "--json").json() == []
    lamina.assert_consistent()


def test_missing_blob_is_named(lamina: Lamina, layout: Path) -> None:
    _, manifest = _manifest(layout)
    _blob(layout, manifest["layers"][1]["digest"]).unlink()
    res = lamina.fail("load", layout)
    assert res.code == 2
    # found before anything is written (#14.3): which blob, and what needs it
    assert f"blob {manifest['layers'][1]['digest']}, layer 2 of " in res.err
    assert res.err.endswith("is neither in the archive nor in the store: nothing loaded\n")
    assert lamina.blob_files() == set()
    lamina.assert_consistent()


@pytest.mark.parametrize("target,content,message", [
    ("index.json", b"{not json", "index.json is not valid JSON"),
    ("index.json", b"[]", "index.json is not a JSON object"),
    ("manifest", b'{"schemaVersion": 2, "layers": []}', "image manifest has no config"),
    ("config", b'{"architecture": "amd64", "os": "linux"}', "rootfs.type must be 'layers'"),
])
def test_malformed_json_is_named(lamina: Lamina, layout: Path, target: str, content: bytes,
                                 message: str) -> None:
    manifest_path, manifest = _manifest(layout)
    if target == "index.json":
        (layout / "index.json").write_bytes(content)
    else:
        # rewrite the blob and every descriptor naming it, so only the content is wrong
        import hashlib

        digest = "sha256:" + hashlib.sha256(content).hexdigest()
        if target == "manifest":
            manifest_path.unlink()
            _blob(layout, digest).write_bytes(content)
            index = json.loads((layout / "index.json").read_text())
            index["manifests"][0].update(digest=digest, size=len(content))
            (layout / "index.json").write_text(json.dumps(index))
        else:
            _blob(layout, digest).write_bytes(content)
            manifest["config"].update(digest=digest, size=len(content))
            raw = json.dumps(manifest).encode()
            mdigest = "sha256:" + hashlib.sha256(raw).hexdigest()
            _blob(layout, mdigest).write_bytes(raw)
            index = json.loads((layout / "index.json").read_text())
            index["manifests"][0].update(digest=mdigest, size=len(raw))
            (layout / "index.json").write_text(json.dumps(index))
    res = lamina.fail("load", layout)
    assert res.code == 3, res.err
    assert message in res.err, res.err
    assert lamina.blob_files() == set()
    lamina.assert_consistent()


def _hostile_layer(entries: list[tuple[str, str, str]]) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tf:
        for name, kind, arg in entries:
            info = tarfile.TarInfo(name)
            if kind == "file":
                data = arg.encode()
                info.size = len(data)
                tf.addfile(info, io.BytesIO(data))
            elif kind == "symlink":
                info.type, info.linkname = tarfile.SYMTYPE, arg
                tf.addfile(info)
            elif kind == "hardlink":
                info.type, info.linkname = tarfile.LNKTYPE, arg
                tf.addfile(info)
    return gzip.compress(buf.getvalue(), mtime=0)


HOSTILE = {
    "dotdot": [("../escaped", "file", "x")],
    "deep-dotdot": [("a/../../escaped", "file", "x")],
    "symlink-then-write": [("evil", "symlink", "../../.."), ("evil/escaped", "file", "x")],
    "hardlink-out": [("link", "hardlink", "../../outside-secret")],
    "whiteout-dotdot": [(".wh...", "file", "")],
}


@pytest.mark.parametrize("case", sorted(HOSTILE))
def test_hostile_layers_are_refused(lamina: Lamina, layout: Path, tmp_path: Path,
                                    case: str) -> None:
    """A layout whose last layer is hostile loads (it is only bytes) but never unpacks."""
    import hashlib

    manifest_path, manifest = _manifest(layout)
    layer = _hostile_layer(HOSTILE[case])
    diff_id = "sha256:" + hashlib.sha256(gzip.decompress(layer)).hexdigest()
    digest = "sha256:" + hashlib.sha256(layer).hexdigest()
    _blob(layout, digest).write_bytes(layer)
    config_path = _blob(layout, manifest["config"]["digest"])
    config = json.loads(config_path.read_text())
    config["rootfs"]["diff_ids"][-1] = diff_id
    craw = json.dumps(config).encode()
    cdigest = "sha256:" + hashlib.sha256(craw).hexdigest()
    _blob(layout, cdigest).write_bytes(craw)
    manifest["config"].update(digest=cdigest, size=len(craw))
    manifest["layers"][-1].update(digest=digest, size=len(layer))
    raw = json.dumps(manifest).encode()
    mdigest = "sha256:" + hashlib.sha256(raw).hexdigest()
    _blob(layout, mdigest).write_bytes(raw)
    index = json.loads((layout / "index.json").read_text())
    index["manifests"][0].update(digest=mdigest, size=len(raw))
    (layout / "index.json").write_text(json.dumps(index))

    assert lamina.run("load", layout).out.strip() == "Loaded image: demo/a:latest"
    box = tmp_path / "box"
    box.mkdir()
    (tmp_path / "outside-secret").write_text("secret")
    target = box / "deep" / "root"
    res = lamina.fail("unpack", "demo/a", target)
    assert res.code == 3 and res.err.startswith("lamina: "), res.err
    assert not target.exists()               # the partial unpack was removed
    assert sorted(p.name for p in box.rglob("*")) == []  # nothing landed beside it
    assert not (tmp_path / "escaped").exists() and not (box / "escaped").exists()
    assert (tmp_path / "outside-secret").read_text() == "secret"
    lamina.assert_consistent()


def test_unreadable_archive(lamina: Lamina, tmp_path: Path) -> None:
    junk = tmp_path / "junk.tar"
    junk.write_bytes(b"\x1f\x8b" + b"not really gzip" * 10)
    res = lamina.fail("load", junk)
    assert res.code == 3 and "cannot decompress" in res.err
    empty = tmp_path / "empty"
    empty.mkdir()
    shutil.copy(junk, empty / "manifest.json")
    res = lamina.fail("load", empty)
    assert "manifest.json" in res.err
    assert lamina.blob_files() == set()
