"""``lamina rebase`` in the store: an app built on base v1 moved onto base v2, against a
fresh build on v2, the refusals, the annotations, and what skopeo and umoci read."""

from __future__ import annotations

import json
import subprocess
from dataclasses import dataclass
from pathlib import Path

import pytest

from lamina_testing import Lamina, need, tree_listing
from stack_images import BASE, build_app, make_bases


@dataclass
class Stack:
    lamina: Lamina
    work: Path


@pytest.fixture(scope="module")
def template(tmp_path_factory: pytest.TempPathFactory) -> Path:
    work = tmp_path_factory.mktemp("rebase")
    lam = Lamina(work / "store", work)
    v1, v2 = make_bases(work)
    lam.run("import", "base:v1", v1)
    lam.run("import", "base:v2", v2)
    build_app(lam, work, "base:v1", "v1")
    build_app(lam, work, "base:v2", "fresh")
    return work / "store"


@pytest.fixture
def stack(template: Path, tmp_path: Path) -> Stack:
    import shutil

    shutil.copytree(template, tmp_path / "store")
    return Stack(Lamina(tmp_path / "store", tmp_path), tmp_path)


def doc(lamina: Lamina, ref: str) -> dict[str, object]:
    return lamina.run("inspect", ref).json()[0]  # type: ignore[no-any-return]


def layers(lamina: Lamina, ref: str) -> list[str]:
    return [d["digest"] for d in doc(lamina, ref)["Manifest"]["layers"]]  # type: ignore[index]


def manifest_of(lamina: Lamina, ref: str) -> dict[str, object]:
    digest = str(doc(lamina, ref)["Digest"])
    raw = (lamina.root / "blobs" / "sha256" / digest.split(":")[1]).read_bytes()
    return json.loads(raw)  # type: ignore[no-any-return]


def test_rebase_keeps_the_app_layers_and_equals_a_fresh_build(stack: Stack) -> None:
    lam = stack.lamina
    res = lam.run("rebase", "app:v1", "--old-base", "base:v1", "--new-base", "base:v2",
                  "-t", "app:rebased", "--json").json()
    assert (res["replaced_layers"], res["new_base_layers"], res["kept_layers"]) == (1, 1, 2)
    assert res["blobs_moved"] == 1          # the config; every layer was there
    app, rebased = layers(lam, "app:v1"), layers(lam, "app:rebased")
    assert rebased[1:] == app[1:]           # the app's own blobs, byte for byte
    assert rebased[0] == layers(lam, "base:v2")[0]
    # COPY layers do not depend on what lies under them: the very layers of a rebuild
    assert rebased == layers(lam, "app:fresh")
    lam.run("unpack", "app:rebased", stack.work / "r")
    lam.run("unpack", "app:fresh", stack.work / "f")
    tree = tree_listing(stack.work / "r")
    assert tree == tree_listing(stack.work / "f")
    assert (stack.work / "r" / "etc" / "os-release").read_text() == "base v2\n"
    assert (stack.work / "r" / "etc" / "app.conf").read_text() == "the app's own conf\n"
    assert (stack.work / "r" / "bin" / "tool").exists()
    d = doc(lam, "app:rebased")
    assert d["Config"] == doc(lam, "app:fresh")["Config"]
    history = d["History"]
    assert isinstance(history, list)
    note = next(h for h in history if h.get("created_by") == "lamina rebase")
    assert note["empty_layer"] and note["comment"].startswith(
        f"rebased from {BASE}:v1@sha256:") and f"onto {BASE}:v2@sha256:" in note["comment"]
    assert sum(1 for h in history if not h.get("empty_layer")) == 3
    notes = manifest_of(lam, "app:rebased")["annotations"]
    assert notes == {"org.opencontainers.image.base.name": f"{BASE}:v2",
                     "org.opencontainers.image.base.digest": doc(lam, "base:v2")["Digest"]}
    lam.assert_consistent()


def test_rebase_without_bases_reads_the_annotations(stack: Stack) -> None:
    lam = stack.lamina
    lam.run("rebase", "app:v1", "--old-base", "base:v1", "--new-base", "base:v2",
            "-t", "app:moved")
    v2 = doc(lam, "base:v2")["Digest"]
    # base:v2 now names what v1 was: "rebase onto the base's name as it is now"
    lam.run("tag", "base:v1", "base:v2")
    res = lam.run("rebase", "app:moved", "--json").json()
    assert res["old_base"] == f"{BASE}@{v2}"       # the recorded digest
    assert res["new_base"] == f"{BASE}:v2@{doc(lam, 'base:v1')['Digest']}"
    assert layers(lam, "app:moved") == layers(lam, "app:v1")
    history = doc(lam, "app:moved")["History"]
    assert isinstance(history, list)
    assert [h.get("created_by") for h in history].count("lamina rebase") == 1


def test_rebase_onto_a_non_base_is_refused(stack: Stack) -> None:
    lam = stack.lamina
    before = lam.blob_files()
    tags = lam.run("images", "--json").json()
    res = lam.fail("rebase", "app:v1", "--old-base", "base:v2", "--new-base", "base:v1",
                   "-t", "app:bad")
    assert res.code == 3
    def diff_id(ref: str) -> str:
        return str(doc(lam, ref)["RootFS"]["Layers"][0])[7:19]  # type: ignore[index]

    assert res.err.splitlines() == [
        f"lamina: app:v1 is not built on base:v2: layer 1 is {diff_id('app:v1')} "
        f"in the image, {diff_id('base:v2')} in the base"]
    assert lam.blob_files() == before and lam.run("images", "--json").json() == tags
    res = lam.fail("rebase", "app:v1", "--new-base", "base:v2")
    assert res.code == 3 and "records no base digest" in res.err


def test_skopeo_and_umoci_read_a_rebased_image(stack: Stack) -> None:
    skopeo, umoci = need("skopeo"), need("umoci")
    lam = stack.lamina
    lam.run("rebase", "app:v1", "--old-base", "base:v1", "--new-base", "base:v2",
            "-t", "app:rebased")
    layout = stack.work / "layout"
    lam.run("save", "app:rebased", "-o", layout, "--format", "oci")
    info = json.loads(subprocess.run([skopeo, "inspect", f"oci:{layout}:rebased"],
                                     check=True, capture_output=True, text=True).stdout)
    assert info["Layers"] == layers(lam, "app:rebased")
    assert info["Env"] == ["PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
                           "APP=1"]
    copied = stack.work / "copied"
    subprocess.run([skopeo, "copy", f"oci:{layout}:rebased", f"oci:{copied}:x"], check=True,
                   capture_output=True)
    bundle = stack.work / "bundle"
    subprocess.run([umoci, "unpack", "--image", f"{copied}:x", bundle], check=True,
                   capture_output=True)
    lam.run("unpack", "app:rebased", stack.work / "mine")
    assert tree_listing(bundle / "rootfs") == tree_listing(stack.work / "mine")


def test_diff_history_and_web_pages_tell_the_rebase(stack: Stack) -> None:
    import anyio
    import httpx

    from lamina.server import ServerConfig, create_app
    from lamina.store import Store

    lam = stack.lamina
    lam.run("rebase", "app:v1", "--old-base", "base:v1", "--new-base", "base:v2",
            "-t", "app:rebased")
    diff = lam.run("diff", "app:v1", "app:rebased", "--json").json()
    assert diff["relation"] == ("B is A rebased: layer 1 of A replaced by layer 1 of B; "
                                "the top 2 layers kept (same bytes)")
    text = lam.run("diff", "app:v1", "app:rebased").out
    assert [line.split()[1] for line in text.splitlines()[3:6]] == ["≠", "~", "~"]
    assert lam.run("diff", "app:v1", "app:fresh", "--json").json()["relation"] == (
        "B is A on another base: layer 1 of A replaced by layer 1 of B; the top 2 layers "
        "kept (same bytes)")
    v1, v2 = doc(lam, "base:v1")["Digest"], doc(lam, "base:v2")["Digest"]
    notes = [line for line in lam.run("history", "app:rebased").out.splitlines()
             if line.startswith("Stack: ")]
    assert notes == [f"Stack: base: {BASE}:v2@{v2}",
                     f"Stack: rebased from {BASE}:v1@{v1} onto {BASE}:v2@{v2}"]
    assert "Stack:" not in lam.run("history", "app:v1").out

    async def page() -> str:
        with Store(lam.root) as store:
            app = create_app(store, ServerConfig())
            async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app),
                                         base_url="http://registry.test") as c:
                r = await c.get("/ui/r/library/app/-/image/rebased")
                assert r.status_code == 200
                return r.text

    html = anyio.run(page)
    assert html.count('class="stack-note"') == 2
    assert f"rebased from {BASE}:v1@{v1} onto {BASE}:v2@{v2}" in html


def test_rebase_between_layouts_gives_the_store_result(stack: Stack) -> None:
    lam, work = stack.lamina, stack.work
    for ref, out in (("app:v1", "app"), ("base:v1", "b1"), ("base:v2", "b2")):
        lam.run("save", ref, "-o", work / out, "--format", "oci")
    res = lam.run("rebase", f"oci:{work / 'app'}:v1", "--old-base", f"oci:{work / 'b1'}:v1",
                  "--new-base", f"oci:{work / 'b2'}:v2", "-t", f"oci:{work / 'out'}:rebased",
                  "--json").json()
    stored = lam.run("rebase", "app:v1", "--old-base", "base:v1", "--new-base", "base:v2",
                     "-t", "app:rebased", "--json").json()
    assert res["digest"] == stored["digest"]
    index = json.loads((work / "out" / "index.json").read_text())
    assert [m["annotations"] for m in index["manifests"]] == [
        {"io.containerd.image.name": "docker.io/library/app:rebased",
         "org.opencontainers.image.ref.name": "rebased"}]
    # Without -t the layout's own entry is replaced, as crane rebase overwrites the tag.
    lam.run("rebase", f"oci:{work / 'app'}:v1", "--old-base", f"oci:{work / 'b1'}:v1",
            "--new-base", f"oci:{work / 'b2'}:v2")
    index = json.loads((work / "app" / "index.json").read_text())
    assert [m["digest"] for m in index["manifests"]] == [stored["digest"]]


def test_rebase_of_an_index_needs_a_platform(lamina: Lamina, tmp_path: Path) -> None:
    from stack_images import write_layout

    lamina.run("load", write_layout(tmp_path / "layout", [[("f", "file", b"x")]],
                                    as_index=True))
    res = lamina.fail("rebase", "test/img", "--old-base", "a", "--new-base", "b")
    assert res.code == 3 and res.err.splitlines() == [
        "lamina: test/img is an index: rebase one platform's image with --platform OS/ARCH"]
