"""#10.6: a decompression bomb stops at the expansion limit — unpack, run and load —
with one line naming the layer, the limit and how to raise it, and nothing left behind.
The tests lower the floor (``RATIO:FLOOR``) so a 24 MiB layer plays the 2 GiB bomb."""

from __future__ import annotations

from pathlib import Path

import pytest

from image_surgery import Layout, bomb_layer, edit_layout, small_layout
from lamina_testing import Lamina, need

ZEROS = 24 << 20        # ~24 kB of gzip (~1000×), under 1 kB of zstd: past 100:1MiB
LOW = "100:1MiB"


def _bomb_image(tmp_path: Path, kind: str) -> tuple[Path, str]:
    layout = small_layout(tmp_path)
    blob, diff_id = bomb_layer(kind, ZEROS)

    def edit(img: Layout) -> None:
        img.set_layer(1, blob, f"application/vnd.oci.image.layer.v1.tar+{kind}")
        img.config["rootfs"]["diff_ids"][1] = diff_id

    img = edit_layout(layout, edit)
    return layout, img.manifest["layers"][1]["digest"]


def _refused(res_err: str, digest: str) -> None:
    assert f"layer {digest}" in res_err, res_err
    assert "decompression bomb" in res_err and "--max-expansion" in res_err, res_err
    assert "LAMINA_MAX_EXPANSION" in res_err, res_err
    assert len(res_err.strip().splitlines()) == 1, res_err


@pytest.mark.parametrize("kind", ["gzip", "zstd"])
def test_unpack_stops_at_the_limit(lamina: Lamina, tmp_path: Path, kind: str) -> None:
    layout, digest = _bomb_image(tmp_path, kind)
    lamina.run("load", "--max-expansion", "off", layout)
    target = tmp_path / "rootfs"
    res = lamina.fail("unpack", "--max-expansion", LOW, "demo/x", target)
    assert res.code == 3
    _refused(res.err, digest)
    assert "100× its compressed size (at least 1.05MB)" in res.err, res.err
    assert not target.exists()
    # the environment sets the same limit; a generous one lets the layer through
    res = lamina.run("unpack", "demo/x", target, check=False,
                     env={"LAMINA_MAX_EXPANSION": LOW})
    assert res.code == 3 and not target.exists()
    lamina.run("unpack", "--max-expansion", "off", "demo/x", target)
    assert (target / "zeros").stat().st_size == ZEROS
    lamina.assert_consistent()


def test_load_stops_at_the_limit(lamina: Lamina, tmp_path: Path) -> None:
    layout, digest = _bomb_image(tmp_path, "gzip")
    res = lamina.run("load", layout, check=False, env={"LAMINA_MAX_EXPANSION": LOW})
    assert res.code == 3 and "Traceback" not in res.err
    _refused(res.err, digest)
    assert lamina.run("images", "--json").json() == []
    assert lamina.blob_files() == set()
    lamina.assert_consistent()


def test_run_stops_at_the_limit(lamina: Lamina, tmp_path: Path) -> None:
    need("bwrap")
    layout, digest = _bomb_image(tmp_path, "zstd")
    lamina.run("load", "--max-expansion", "off", layout)
    res = lamina.fail("run", "--max-expansion", LOW, "--snapshotter", "walk", "demo/x",
                      "/bin/true")
    assert res.code == 3
    _refused(res.err, digest)
    tmp = lamina.root / "tmp"
    assert not tmp.exists() or list(tmp.iterdir()) == []
    snapshots = lamina.root / "snapshots"
    assert sum(p.stat().st_size for p in snapshots.rglob("*") if p.is_file()) < 1 << 20
    lamina.assert_consistent()


def test_bad_limit_is_named(lamina: Lamina, tmp_path: Path) -> None:
    res = lamina.fail("unpack", "--max-expansion", "lots", "demo/x", tmp_path / "t")
    assert res.code == 3 and "--max-expansion 'lots'" in res.err, res.err


def test_limit_values() -> None:
    from lamina.errors import InvalidInput
    from lamina.layer.options import ExpansionLimit

    default = ExpansionLimit()
    assert default.budget(2_000_000) == 1 << 30          # the 2 MB → 2 GiB: refused
    assert default.budget(100 << 20) == 100 * (100 << 20)
    assert ExpansionLimit.parse("off").budget(1) is None
    assert ExpansionLimit.parse("1000:8GiB") == ExpansionLimit(1000, 8 << 30)
    for bad in ("0.5", "-1", "x:1GB", "10:lots"):
        with pytest.raises(InvalidInput):
            ExpansionLimit.parse(bad)
