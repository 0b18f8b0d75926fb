"""#10.5: ``load`` refuses an image that can never be unpacked before it tags anything
(every layer decompressed once and checked against its diff_id, as Docker's load
does; known layer media types; one diff_id per layer), and ``fsck`` reports such
images that came in another way (a pull checks only the cheap part:
tests/registry/test_registry_hostile.py)."""

from __future__ import annotations

import gzip
import json
import sqlite3
from pathlib import Path

import pytest

from image_surgery import Layout, edit_layout, layer, record_unchecked, sha256, small_layout
from lamina_testing import Lamina


@pytest.fixture
def layout(tmp_path: Path) -> Path:
    return small_layout(tmp_path)


def _bad_header(img: Layout) -> None:
    """The top layer with one header byte changed: a tar header checksum that fails,
    and a config diff_id that matches the damaged tar (so only the tar is wrong)."""
    tar = bytearray(gzip.decompress(img.layer_bytes(1)))
    tar[1024 + 100] ^= 0x01      # the mode field of the second header
    img.set_layer(1, gzip.compress(bytes(tar), mtime=0))
    img.config["rootfs"]["diff_ids"][1] = sha256(bytes(tar))


def _wrong_diff_id(img: Layout) -> None:
    _, other = layer([("other", b"not the layer\n")])
    img.config["rootfs"]["diff_ids"][1] = other


CASES = {
    # name: (edit, exit code, words of the message)
    "wrong diff_id": (_wrong_diff_id, 4, "but the config says"),
    "missing diff_id": (lambda img: img.config["rootfs"]["diff_ids"].pop(), 3,
                        "has 2 layers but its config lists 1 diff_ids"),
    "unknown media type": (lambda img: img.manifest["layers"][1].update(
        mediaType="application/x-not-a-layer"), 7, "'application/x-not-a-layer'"),
    "bad tar header": (_bad_header, 3, "bad checksum"),
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_load_refuses_images_that_cannot_be_unpacked(lamina: Lamina, layout: Path,
                                                     case: str) -> None:
    edit, code, words = CASES[case]
    img = edit_layout(layout, edit)
    res = lamina.fail("load", layout)
    assert res.code == code, res.err
    assert words in res.err, res.err
    if case != "missing diff_id":
        assert f"layer 2 ({img.manifest['layers'][1]['digest']}) cannot be unpacked" \
            in res.err, res.err
    assert len(res.err.strip().splitlines()) == 1, res.err
    assert lamina.run("images", "--json").json() == []
    assert lamina.blob_files() == set()
    lamina.assert_consistent()


def test_load_checks_a_layer_once(lamina: Lamina, layout: Path, tmp_path: Path) -> None:
    """A good image loads; its layers are remembered as verified (blob → diff_id), so a
    second load of the same layers does not decompress them again — and a config that
    lies about a layer already verified is still refused."""
    img = Layout(layout)
    lamina.run("load", layout)
    with sqlite3.connect(lamina.root / "meta.db") as db:
        rows = dict(db.execute("SELECT digest, diff_id FROM verified_layers"))
    assert rows == {d["digest"]: i for d, i in zip(img.manifest["layers"],
                                                   img.config["rootfs"]["diff_ids"],
                                                   strict=True)}
    # The same layers under a config naming another diff_id for the top one.
    edit_layout(layout, _wrong_diff_id)
    res = lamina.fail("load", "--name", "demo/liar", layout)
    assert res.code == 4 and "but the config says" in res.err, res.err
    assert [i["tag"] for i in lamina.run("images", "--json").json()] == ["latest"]
    lamina.assert_consistent()


def test_fsck_reports_an_image_that_cannot_be_unpacked(lamina: Lamina, layout: Path) -> None:
    """An image recorded without the load check (as a registry push to ``lamina
    serve`` or an older lamina recorded it) is found by fsck."""
    img = edit_layout(layout, _bad_header)
    manifest = record_unchecked(lamina.root, img, json.dumps(img.config).encode(),
                                "docker.io/demo/bad:latest")
    res = lamina.run("fsck", "--json", check=False)
    assert res.code == 1
    report = res.json()
    assert not report["clean"]
    assert report["corrupt"] == [] and report["dangling"] == []
    [problem] = report["unpackable"]
    assert manifest in problem and "bad checksum" in problem
    assert f"layer 2 ({img.manifest['layers'][1]['digest']})" in problem
    text = lamina.run("fsck", check=False).out
    assert "cannot be unpacked" in text and "1 problems" in text
