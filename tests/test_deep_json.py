"""#10.3: JSON nested deeper than any image document needs is refused with one line
(exit 3, nothing left in the store), wherever it comes from: index.json, a config, a
docker archive's config or manifest.json, a config in the store (registry pulls:
tests/registry/test_registry_hostile.py)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from image_surgery import (
    Layout,
    deep,
    docker_archive_dir,
    edit_layout,
    record_unchecked,
    small_layout,
    with_deep_value,
)
from lamina.image.jsondoc import MAX_DEPTH, load_json
from lamina_testing import Lamina


@pytest.fixture
def layout(tmp_path: Path) -> Path:
    return small_layout(tmp_path)


def _refused(lamina: Lamina, *args: str | Path) -> str:
    res = lamina.fail(*args)
    assert res.code == 3, res.err
    assert f"nests deeper than {MAX_DEPTH} levels" in res.err, res.err
    assert len(res.err.strip().splitlines()) == 1, res.err
    return res.err


def test_deep_index_json_is_refused(lamina: Lamina, layout: Path) -> None:
    index = json.loads((layout / "index.json").read_text())
    (layout / "index.json").write_bytes(with_deep_value(index))
    assert "index.json" in _refused(lamina, "load", layout)
    assert lamina.blob_files() == set()
    lamina.assert_consistent()


def test_deep_config_in_a_layout_is_refused(lamina: Lamina, layout: Path) -> None:
    img = Layout(layout)
    img.write(config_raw=with_deep_value(img.config))
    _refused(lamina, "load", layout)
    assert lamina.blob_files() == set()
    assert lamina.run("images", "--json").json() == []
    lamina.assert_consistent()


def test_deep_docker_archive_config_and_manifest_json(lamina: Lamina, tmp_path: Path,
                                                       layout: Path) -> None:
    lamina.run("load", layout)
    archive = docker_archive_dir(lamina, "demo/x", tmp_path / "archive")
    listing = json.loads((archive / "manifest.json").read_text())
    config = archive / listing[0]["Config"]
    good_config = config.read_bytes()
    config.write_bytes(with_deep_value(json.loads(good_config)))
    other = Lamina(tmp_path / "other", tmp_path)
    assert listing[0]["Config"] in _refused(other, "load", archive)
    config.write_bytes(good_config)
    (archive / "manifest.json").write_text(f"[{deep(100_000)}]")
    assert "manifest.json" in _refused(other, "load", archive)
    assert other.blob_files() == set()


def test_unpack_of_a_stored_image_with_a_deep_config(lamina: Lamina, layout: Path,
                                                     tmp_path: Path) -> None:
    """An image any config can reach the store through ``lamina serve``."""
    record_unchecked(lamina.root, Layout(layout), with_deep_value(Layout(layout).config),
                     "docker.io/demo/deep:latest")
    target = tmp_path / "rootfs"
    _refused(lamina, "unpack", "demo/deep", target)
    assert not target.exists()
    _refused(lamina, "history", "demo/deep")


def test_depth_bound_is_exact() -> None:
    assert load_json(deep(MAX_DEPTH), "doc") is not None
    from lamina.errors import InvalidManifest

    with pytest.raises(InvalidManifest, match="doc nests deeper"):
        load_json(deep(MAX_DEPTH + 1), "doc")
    with pytest.raises(InvalidManifest, match="doc nests deeper"):
        load_json('{"a": ' * (MAX_DEPTH + 1) + "1" + "}" * (MAX_DEPTH + 1), "doc")
    assert load_json(b'"str"', "doc") == "str"


def test_edit_helper_keeps_a_good_layout_loadable(lamina: Lamina, layout: Path) -> None:
    """The surgery itself is sound: an edit that changes nothing still loads."""
    edit_layout(layout, lambda img: None)
    assert lamina.run("load", layout).out.strip() == "Loaded image: demo/x:latest"
