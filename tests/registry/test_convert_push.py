"""#11.1: ``push --dest-compress-format zstd:chunked`` converts the stored gzip layers
on the way to a real docker-registry: skopeo reads and copies the result, a pull into a
fresh store unpacks to the same tree, and a second push converts nothing (the recorded
conversion's blob is already there: HEAD, skip)."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

from registry_servers import DockerRegistry

from lamina.layer import zstdchunked as zc
from lamina_testing import Lamina, need, tree_listing


def _tree(root: Path) -> Path:
    (root / "etc").mkdir(parents=True)
    (root / "etc" / "conf").write_text("a = 1\n")
    (root / "big").write_bytes(bytes(range(256)) * 12_000)
    (root / "link").symlink_to("etc/conf")
    return root


def test_push_converts_to_zstd_chunked_once(lamina: Lamina, registry: DockerRegistry,
                                            tmp_path: Path) -> None:
    skopeo = need("skopeo")
    base = _tree(tmp_path / "t")
    subprocess.run(["cp", "-a", base, tmp_path / "t2"], check=True)
    (tmp_path / "t2" / "etc" / "conf").write_text("a = 2\n")
    lamina.run("import", "cv/push:v1", base, tmp_path / "t2")      # two layers, both pushed
    stored = lamina.run("inspect", "cv/push:v1").json()[0]        # at once (--jobs 3)
    dest = f"{registry.host}/convert/push:v1"
    first = lamina.run("push", "--json", "--dest-compress-format", "zstd:chunked",
                       "cv/push:v1", dest).json()
    assert first["converted"] == 2

    raw = json.loads(subprocess.run(
        [skopeo, "inspect", "--raw", "--tls-verify=false", f"docker://{dest}"],
        check=True, capture_output=True, text=True).stdout)
    assert first["digest"] != stored["Digest"]         # other layer bytes, so another manifest
    assert raw["config"]["digest"] == stored["Id"]     # the same config: the image id is kept
    assert len(raw["layers"]) == 2
    for layer in raw["layers"]:
        assert layer["mediaType"] == "application/vnd.oci.image.layer.v1.tar+zstd"
        assert zc.toc_location(layer["annotations"]) is not None
    # skopeo copies it (and checks every digest on the way)
    subprocess.run([skopeo, "copy", "--src-tls-verify=false", f"docker://{dest}",
                    f"oci:{tmp_path / 'sk'}:v1"], check=True, capture_output=True)
    assert (tmp_path / "sk" / "blobs" / "sha256" / layer["digest"].split(":")[1]).exists()

    other = Lamina(tmp_path / "other", tmp_path)
    other.run("pull", dest)
    other.run("unpack", dest, tmp_path / "pulled")
    lamina.run("unpack", "cv/push:v1", tmp_path / "orig")
    assert tree_listing(tmp_path / "pulled") == tree_listing(tmp_path / "orig")

    # Again, and to another tag: the recorded conversion's blob is there, nothing converts.
    again = lamina.run("push", "--json", "--dest-compress-format", "zstd:chunked",
                       "cv/push:v1", f"{registry.host}/convert/push:v2").json()
    assert again["converted"] == 0
    assert again["digest"] == first["digest"]
    assert {b["result"] for b in again["blobs"].values()} <= {"exists", "mounted"}


def test_plain_layers_are_gzipped_once_for_a_registry(lamina: Lamina, registry: DockerRegistry,
                                                       tmp_path: Path) -> None:
    """The default conversion (plain layers leave gzip'd) is recorded too: the same copy
    again finds the gzip blob in the registry and compresses nothing."""
    lamina.run("import", "cv/plain:v1", _tree(tmp_path / "t"))
    lamina.run("save", "-o", tmp_path / "a.tar", "cv/plain:v1")    # uncompressed layers
    dest = f"docker://{registry.host}/convert/plain:v1"
    first = lamina.run("copy", "--json", f"docker-archive:{tmp_path / 'a.tar'}", dest).json()
    again = lamina.run("copy", "--json", f"docker-archive:{tmp_path / 'a.tar'}", dest).json()
    assert (first["converted"], again["converted"]) == (1, 0)
    assert again["digest"] == first["digest"] and again["copied"] == 0
