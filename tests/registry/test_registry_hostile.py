"""Images a real docker-registry serves that lamina must refuse on pull: one line, the
exit code of its kind, nothing tagged, no blobs left behind."""

from __future__ import annotations

import uuid
from pathlib import Path

from registry_servers import DockerRegistry

from image_surgery import Layout, edit_layout, small_layout, with_deep_value
from lamina.image.jsondoc import MAX_DEPTH
from lamina_testing import Lamina


def _push_layout(lamina: Lamina, layout: Path, registry: DockerRegistry, name: str) -> str:
    """Put the layout's image in the registry as it is (copy never parses a config)."""
    ref = f"{registry.host}/{name}-{uuid.uuid4().hex[:8]}:v1"
    lamina.run("copy", f"oci:{layout}", f"docker://{ref}")
    return ref


def test_pull_of_a_deep_config_is_refused(lamina: Lamina, registry: DockerRegistry,
                                          tmp_path: Path) -> None:
    """#10.3"""
    layout = small_layout(tmp_path)
    img = Layout(layout)
    img.write(config_raw=with_deep_value(img.config))
    ref = _push_layout(lamina, layout, registry, "deep")
    res = lamina.fail("pull", ref)
    assert res.code == 3, res.err
    assert f"nests deeper than {MAX_DEPTH} levels" in res.err, res.err
    assert lamina.run("images", "--json").json() == []
    assert lamina.blob_files() == set()
    lamina.assert_consistent()


def _wrong_top_diff_id(img: Layout) -> None:
    img.config["rootfs"]["diff_ids"][1] = "sha256:" + "0" * 64


def test_pull_checks_layer_count_and_media_types(lamina: Lamina, registry: DockerRegistry,
                                                 tmp_path: Path) -> None:
    """#10.5: what pull can check without decompressing is checked before tagging."""
    layout = small_layout(tmp_path)
    edit_layout(layout, lambda img: img.manifest["layers"][1].update(
        mediaType="application/x-not-a-layer"))
    ref = _push_layout(lamina, layout, registry, "mediatype")
    res = lamina.fail("pull", ref)
    assert res.code == 7 and "'application/x-not-a-layer'" in res.err, res.err
    assert "layer 2" in res.err and "cannot be unpacked" in res.err, res.err
    edit_layout(layout, lambda img: img.config["rootfs"]["diff_ids"].pop())
    ref = _push_layout(lamina, layout, registry, "count")
    res = lamina.fail("pull", ref)
    assert res.code == 3 and "its config lists 1 diff_ids" in res.err, res.err
    assert lamina.run("images", "--json").json() == []
    assert lamina.blob_files() == set()
    lamina.assert_consistent()


def test_fsck_finds_a_pulled_layer_that_is_not_its_diff_id(lamina: Lamina,
                                                           registry: DockerRegistry,
                                                           tmp_path: Path) -> None:
    """#10.5: pull does not decompress (bench/bench_load.py: 17× its CPU), fsck does."""
    layout = small_layout(tmp_path)
    edit_layout(layout, _wrong_top_diff_id)
    ref = _push_layout(lamina, layout, registry, "diffid")
    lamina.run("pull", ref)
    res = lamina.run("fsck", "--json", check=False)
    assert res.code == 1, res.out
    [problem] = res.json()["unpackable"]
    assert "layer 2" in problem and "but the config says sha256:000" in problem, problem
    res = lamina.fail("unpack", ref, tmp_path / "rootfs")
    assert res.code == 4 and not (tmp_path / "rootfs").exists()
