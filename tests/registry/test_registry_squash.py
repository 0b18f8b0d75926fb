"""``lamina squash`` of a registry image (Debian's docker-registry): the layers are
streamed from the registry, only the merged layer and the config are uploaded, the
untouched layers are found there already (or mounted from the image's repository),
and the result is what the same squash makes in a store — counted in the registry's
access log; skopeo copies the result."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

from registry_servers import DockerRegistry, count

from lamina_testing import Lamina, need, tree_listing
from stack_images import LOWER, RANGE, write_layout

_UPLOAD = re.compile(r"/blobs/uploads/[^?]*\?.*digest=(sha256(?::|%3A)[0-9a-f]{64})")


def _uploaded(reqs: list[tuple[str, str, int]]) -> set[str]:
    """The digests of the blobs whose uploads were completed."""
    return {m.group(1).replace("%3A", ":") for method, path, _ in reqs
            if method == "PUT" and (m := _UPLOAD.search(path))}


def test_registry_squash_uploads_only_the_new_layer_and_config(registry: DockerRegistry,
                                                               tmp_path: Path) -> None:
    builder = Lamina(tmp_path / "builder", tmp_path)
    builder.run("load", write_layout(tmp_path / "layout", [LOWER, *RANGE]))
    host = registry.host
    builder.run("push", "test/img", f"{host}/sq/img:v1")
    layers = builder.run("inspect", "test/img").json()[0]["Manifest"]["layers"]
    mark = len(registry.requests("sq/img"))

    runner = Lamina(tmp_path / "empty", tmp_path)
    res = runner.run("squash", f"docker://{host}/sq/img:v1", "--from", "2", "-t",
                     f"docker://{host}/sq/img:squashed", "--json").json()
    reqs = registry.requests("sq/img")[mark:]
    # The layer below the range was there already: only the merged layer and the config
    # went up, then the manifest.
    assert (res["blobs_moved"], res["blobs_present"], res["blobs_mounted"]) == (2, 1, 0)
    assert _uploaded(reqs) == {res["layer"], res["id"]}
    assert layers[0]["digest"] not in _uploaded(reqs)
    assert count(reqs, "PUT", r"/manifests/squashed") == 1
    assert not runner.blob_files()

    # The same squash in a store makes the same layer, config and manifest.
    ref = builder.run("squash", "test/img", "--from", "2", "-t", "test/sq", "--json").json()
    assert (res["layer"], res["id"], res["digest"]) == (ref["layer"], ref["id"],
                                                        ref["digest"])

    # Into another repository of the registry: the untouched layers are mounted.
    mark2 = len(registry.requests("sq/other"))
    res2 = runner.run("squash", f"docker://{host}/sq/img:v1", "--last", "1", "-t",
                      f"docker://{host}/sq/other:top", "--json").json()
    other = registry.requests("sq/other")[mark2:]
    assert res2["blobs_mounted"] == 3 and count(other, "POST", r"mount=sha256") == 3
    assert {d["digest"] for d in layers[:3]}.isdisjoint(_uploaded(other))

    # skopeo reads the result; it unpacks to the original's root.
    skopeo = need("skopeo")
    subprocess.run([skopeo, "copy", "--src-tls-verify=false",
                    f"docker://{host}/sq/img:squashed", f"oci:{tmp_path / 'sk'}:sq"],
                   check=True, capture_output=True)
    check = Lamina(tmp_path / "check", tmp_path)
    check.run("load", tmp_path / "sk")
    check.run("unpack", check.run("images", "-q").out.split()[0], tmp_path / "u-sk")
    builder.run("unpack", "test/img", tmp_path / "u-img")
    assert tree_listing(tmp_path / "u-sk") == tree_listing(tmp_path / "u-img")


def test_registry_squash_out_of_range_pushes_nothing(registry: DockerRegistry,
                                                     tmp_path: Path) -> None:
    builder = Lamina(tmp_path / "builder", tmp_path)
    builder.run("load", write_layout(tmp_path / "layout", [LOWER, *RANGE]))
    host = registry.host
    builder.run("push", "test/img", f"{host}/sq/bad:v1")
    mark = len(registry.requests("sq/bad"))
    runner = Lamina(tmp_path / "empty", tmp_path)
    res = runner.fail("squash", f"docker://{host}/sq/bad:v1", "--from", "9", "-t",
                      f"docker://{host}/sq/bad:squashed")
    assert res.code == 3 and len(res.err.splitlines()) == 1, res.err
    assert "--from 9: the image has layers 1 to 4" in res.err
    reqs = registry.requests("sq/bad")[mark:]
    assert not [r for r in reqs if r[0] in ("POST", "PUT", "PATCH", "DELETE")], reqs
    assert not runner.blob_files()
