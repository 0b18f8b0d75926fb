"""``lamina rebase`` inside one registry (Debian's docker-registry): the new base's
layer is mounted, the config and the manifest are the only uploads, and no layer is
read — counted in the registry's access log and in the (empty) store that ran it."""

from __future__ import annotations

from pathlib import Path

from registry_servers import DockerRegistry, count

from lamina_testing import Lamina, tree_listing
from stack_images import build_app, make_bases


def test_registry_rebase_moves_only_configs_and_manifests(registry: DockerRegistry,
                                                          tmp_path: Path) -> None:
    builder = Lamina(tmp_path / "builder", tmp_path)
    v1, v2 = make_bases(tmp_path)
    builder.run("import", "base:v1", v1)
    builder.run("import", "base:v2", v2)
    build_app(builder, tmp_path, "base:v1", "v1")
    host = registry.host
    for local, remote in (("base:v1", "rb/base:v1"), ("base:v2", "rb/base:v2"),
                          ("app:v1", "rb/app:v1")):
        builder.run("push", local, f"{host}/{remote}")
    marks = {repo: len(registry.requests(repo)) for repo in ("rb/app", "rb/base")}

    runner = Lamina(tmp_path / "empty", tmp_path)     # holds nothing: nothing to copy from
    res = runner.run("rebase", f"docker://{host}/rb/app:v1",
                     "--old-base", f"docker://{host}/rb/base:v1",
                     "--new-base", f"docker://{host}/rb/base:v2",
                     "-t", f"docker://{host}/rb/app:rebased", "--json").json()
    assert (res["blobs_moved"], res["blobs_mounted"], res["blobs_present"]) == (2, 1, 2)
    app = registry.requests("rb/app")[marks["rb/app"]:]
    base = registry.requests("rb/base")[marks["rb/base"]:]
    # No layer left the registry: the only blob GETs are the three configs.
    assert count(app, "GET", r"/blobs/sha256:") == 1
    assert count(base, "GET", r"/blobs/sha256:") == 2
    # The new base's layer is mounted; one upload (the config); one manifest.
    assert count(app, "POST", r"mount=sha256") == 1
    assert count(app, "PUT", r"/blobs/uploads/") == 1
    assert count(app, "PATCH", r"/blobs/uploads/") == 0
    assert count(app, "PUT", r"/manifests/rebased") == 1
    assert not runner.blob_files()

    # The result is the image the same rebase makes in a store, but for the base's name.
    builder.run("rebase", "app:v1", "--old-base", "base:v1", "--new-base", "base:v2",
                "-t", "app:rebased")
    check = Lamina(tmp_path / "check", tmp_path)
    check.run("pull", f"{host}/rb/app:rebased")
    pulled = check.run("inspect", f"{host}/rb/app:rebased").json()[0]
    local = builder.run("inspect", "app:rebased").json()[0]
    assert pulled["Manifest"]["layers"] == local["Manifest"]["layers"]
    assert pulled["Config"] == local["Config"] and pulled["RootFS"] == local["RootFS"]
    check.run("unpack", f"{host}/rb/app:rebased", tmp_path / "pulled")
    builder.run("unpack", "app:rebased", tmp_path / "local")
    assert tree_listing(tmp_path / "pulled") == tree_listing(tmp_path / "local")
    check.assert_consistent()

    # Rebased again from its annotations: back on v1, the manifest names v1's layer.
    res = runner.run("rebase", f"docker://{host}/rb/app:rebased", "--new-base",
                     f"docker://{host}/rb/base:v1", "--json").json()
    assert res["old_base"].startswith(f"{host}/rb/base@sha256:")
    check.run("pull", f"{host}/rb/app:rebased")
    again = check.run("inspect", f"{host}/rb/app:rebased").json()[0]
    first = builder.run("inspect", "app:v1").json()[0]
    assert again["Manifest"]["layers"] == first["Manifest"]["layers"]
