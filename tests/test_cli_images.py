"""The CLI's face (issue 10, item 21): --version, shell completion, ``images -q``,
``--filter``, ``--format``, ``inspect --format``, ``image prune`` / ``system prune`` and
sizes both ways, each against a real store through the installed ``lamina``."""

from __future__ import annotations

import gzip
import hashlib
import json
import sqlite3
from importlib.metadata import version
from pathlib import Path

import pytest

from lamina_testing import Lamina, import_seed_images, need_root, seed_sources


def _ids(lamina: Lamina) -> dict[str, str]:
    """familiar name (or <none>) -> full image id"""
    return {(f"{r['repository']}:{r['tag']}" if r["reference"] else r["digest"]): r["id"]
            for r in lamina.run("images", "--json").json()}


def _listed(lamina: Lamina, template: str, filters: tuple[str, ...]) -> list[str]:
    args = [a for f in filters for a in ("--filter", f)]
    return lamina.run("images", "--format", template, *args).out.split()


# -- --version, completion -----------------------------------------------------------------
def test_version_from_package_metadata(lamina: Lamina) -> None:
    assert lamina.run("--version").out == f"lamina version {version('lamina')}\n"


@pytest.mark.parametrize("shell", ["bash", "zsh", "fish"])
def test_completion_script_per_shell(lamina: Lamina, shell: str) -> None:
    script = lamina.run("completion", shell).out
    assert "_LAMINA_COMPLETE" in script and "lamina" in script
    # the same script through click's own protocol, by the entry point's name
    direct = lamina.run(env={"_LAMINA_COMPLETE": f"{shell}_source"}).out
    assert direct.strip() == script.strip()


def test_completion_of_a_command_name(lamina: Lamina) -> None:
    res = lamina.run(env={"_LAMINA_COMPLETE": "bash_complete", "COMP_WORDS": "lamina pu",
                          "COMP_CWORD": "1"})
    assert res.out.split() == ["plain,pull", "plain,push"]
    res = lamina.run(env={"_LAMINA_COMPLETE": "bash_complete",
                          "COMP_WORDS": "lamina image pr", "COMP_CWORD": "2"})
    assert res.out.split() == ["plain,prune"]


def test_completion_unknown_shell_is_one_line(lamina: Lamina) -> None:
    res = lamina.fail("completion", "tcsh")
    assert res.code == 3
    assert res.err == "lamina: unknown shell 'tcsh': choose bash, zsh or fish\n"


# -- images -q, --filter, --format ---------------------------------------------------------
def test_images_quiet_lists_each_id_once(lamina: Lamina, seed: Path) -> None:
    import_seed_images(lamina, seed)
    lamina.run("tag", "demo/a", "other/a:v1")
    ids = _ids(lamina)
    out = lamina.run("images", "-q").out.split()
    assert sorted(out) == sorted({i.split(":")[1][:12] for i in ids.values()})
    assert len(out) == 2  # demo/a and other/a:v1 are one image
    full = lamina.run("images", "-q", "--no-trunc").out.split()
    assert sorted(full) == sorted(set(ids.values()))


def test_images_filters_as_docker(lamina: Lamina, seed: Path) -> None:
    import_seed_images(lamina, seed)
    old_b = _ids(lamina)["demo/b:latest"]
    # demo/b moves to a newer image: the old one is left dangling
    lamina.run("import", "demo/b", *seed_sources(seed, "b")[:2],
               env={"SOURCE_DATE_EPOCH": "1800000000"})
    lamina.run("tag", "demo/a", "busybox:1.36")

    def q(*filters: str) -> list[str]:
        return _listed(lamina, "{{.Repository}}:{{.Tag}}", filters)

    assert q("dangling=true") == ["<none>:<none>"]
    assert lamina.run("images", "-q", "-f", "dangling=true").out.split() == [old_b[7:19]]
    assert sorted(q("dangling=false")) == ["busybox:1.36", "demo/a:latest", "demo/b:latest"]
    assert sorted(q("reference=demo/*")) == ["demo/a:latest", "demo/b:latest"]
    assert q("reference=*") == ["busybox:1.36"]  # * stops at / (Go's path.Match)
    assert q("reference=busybox:1.*") == ["busybox:1.36"]
    assert sorted(q("reference=demo/a", "reference=busybox")) == ["busybox:1.36",
                                                                  "demo/a:latest"]
    # docker images REPOSITORY[:TAG]: the same as its reference filter
    assert lamina.run("images", "demo/a", "--format", "{{.Repository}}:{{.Tag}}").out.split() \
        == ["demo/a:latest"]
    assert lamina.run("images", "-q", "busybox:1.36").out.split() == \
        [_ids(lamina)["busybox:1.36"][7:19]]
    assert lamina.run("images", "-q", "nothing/here").out == ""
    assert q("since=demo/a") == ["demo/b:latest"]
    assert sorted(q("before=demo/b")) == ["<none>:<none>", "busybox:1.36", "demo/a:latest"]
    assert q("since=demo/a", "dangling=true") == []
    assert q("label=team") == []
    for bad, msg in [("foo=bar", "invalid filter 'foo'"), ("dangling", "bad format"),
                     ("dangling=maybe", "invalid filter 'dangling=maybe'")]:
        res = lamina.fail("images", "--filter", bad)
        assert res.code == 3 and msg in res.err and len(res.err.splitlines()) == 1


def _build(lamina: Lamina, seed: Path, ctx: Path, **images: str) -> None:
    """``base`` from the seed's os snapshot, then each NAME=Containerfile built on it."""
    need_root()
    lamina.run("import", "base", seed / "os")
    ctx.mkdir(exist_ok=True)
    for name, containerfile in images.items():
        (ctx / "Containerfile").write_text(containerfile)
        lamina.run("build", "-t", name, ctx)


def test_images_filter_by_label(lamina: Lamina, seed: Path, tmp_path: Path) -> None:
    _build(lamina, seed, tmp_path / "ctx", web="FROM base\nLABEL team=web tier=front\n",
           db="FROM base\nLABEL team=db\n")

    def q(*filters: str) -> list[str]:
        return sorted(_listed(lamina, "{{.Repository}}", filters))

    assert q("label=team") == ["db", "web"]
    assert q("label=team=web") == ["web"]
    assert q("label=team", "label=tier") == ["web"]  # every label filter must hold
    assert q("label=tier=back") == []


def test_images_format_fields_table_and_json(lamina: Lamina, seed: Path) -> None:
    import_seed_images(lamina, seed)
    rows = {r["repository"]: r for r in lamina.run("images", "--json").json()}
    a = rows["demo/a"]
    line = lamina.run("images", "--filter", "reference=demo/a", "--format",
                      "{{.Repository}} {{.Tag}} {{.ID}} {{.Digest}} {{.CreatedAt}} "
                      "{{.CreatedSince}}").out
    assert line == (f"demo/a latest {a['id'][7:19]} {a['digest']} 2023-11-14 22:13:20 +0000 "
                    f"UTC 3 years ago\n")
    table = lamina.run("images", "--format", "table {{.Repository}}\\t{{.ID}}\\t{{.Size}}"
                       ).out.splitlines()
    assert table[0].split("   ")[:2] == ["REPOSITORY", "IMAGE ID"]
    assert table[0].rstrip().endswith("SIZE")
    # columns aligned: every row's second cell starts where the header's does
    col = table[0].index("IMAGE ID")
    assert all(row[col:col + 12] in (a["id"][7:19], rows["demo/b"]["id"][7:19])
               for row in table[1:])
    docs = [json.loads(x) for x in lamina.run("images", "--format", "json").out.splitlines()]
    assert {d["Repository"] for d in docs} == {"demo/a", "demo/b"}
    assert set(docs[0]) >= {"Repository", "Tag", "ID", "Digest", "CreatedSince", "CreatedAt",
                            "Size", "CompressedSize"}
    assert lamina.run("images", "--format", "{{json .}}").out.splitlines() == \
        lamina.run("images", "--format", "json").out.splitlines()
    res = lamina.fail("images", "--format", "{{.Nope}}")
    assert res.code == 3
    assert res.err == ('lamina: template: :1:2: executing "" at <.Nope>: can\'t evaluate '
                       "field Nope\n")


def test_inspect_format(lamina: Lamina, seed: Path, tmp_path: Path) -> None:
    _build(lamina, seed, tmp_path / "ctx", app="FROM base\nENV A=1 B=two\nLABEL team=web\n")
    doc = lamina.run("inspect", "app").json()[0]

    def fmt(template: str, *refs: str) -> str:
        return lamina.run("inspect", "--format", template, *(refs or ("app",))).out

    assert fmt("{{.Id}}") == doc["Id"] + "\n"
    assert fmt("{{.Id}}", "app", "base").splitlines()[1] == \
        lamina.run("inspect", "base").json()[0]["Id"]
    assert fmt("{{.Config.Env}}") == "[" + " ".join(doc["Config"]["Env"]) + "]\n"
    assert "A=1" in doc["Config"]["Env"] and "B=two" in doc["Config"]["Env"]
    assert json.loads(fmt("{{json .Config}}")) == doc["Config"]
    assert json.loads(fmt("{{json .}}")) == doc
    assert fmt("{{index .RepoTags 0}}") == "app:latest\n"
    assert fmt("{{index .RootFS.Layers 0}}") == doc["RootFS"]["Layers"][0] + "\n"
    assert fmt("{{.Config.Labels.team}}/{{.Config.Labels.none}}") == "web/<no value>\n"
    assert fmt("{{.Os}}/{{.Architecture}}") == f"{doc['Os']}/{doc['Architecture']}\n"
    for bad, msg in [("{{.Config.Nope}}", "executing \"\" at <.Config.Nope>: can't evaluate "
                                          "field Nope"),
                     ("{{.Nope.X}}", "can't evaluate field Nope"),
                     ("{{eval .Id}}", 'function "eval" not defined'),
                     ("{{.Id", "unclosed action")]:
        res = lamina.fail("inspect", "--format", bad, "app")
        assert res.code == 3 and msg in res.err and len(res.err.splitlines()) == 1, res.err


# -- prune ---------------------------------------------------------------------------------
def _blob_bytes(lamina: Lamina) -> int:
    d = lamina.root / "blobs" / "sha256"
    return sum(p.stat().st_size for p in d.iterdir())


def test_image_prune_removes_dangling_only(lamina: Lamina, seed: Path) -> None:
    import_seed_images(lamina, seed)
    old_b = _ids(lamina)["demo/b:latest"]
    lamina.run("import", "demo/b", *seed_sources(seed, "b")[:2],
               env={"SOURCE_DATE_EPOCH": "1800000000"})
    before = _blob_bytes(lamina)
    # no tty, no --force: the prompt reads end of input, nothing is removed
    res = lamina.fail("image", "prune")
    assert "WARNING! This will remove all dangling images." in res.out
    # one lamina line, the input's exit code (not click's bare "Aborted!", exit 1)
    assert res.code == 3, res.err
    assert res.err.endswith("lamina: no answer to the confirmation (no terminal): nothing "
                            "removed; give -f to prune without asking\n"), res.err
    assert "Aborted" not in res.err
    assert len(lamina.run("images", "-q").out.split()) == 3
    res = lamina.run("image", "prune", "-f")
    freed = before - _blob_bytes(lamina)
    assert freed > 0
    from lamina.units import human_size

    assert res.out.splitlines()[0] == "Deleted Images:"
    assert res.out.endswith(f"Total reclaimed space: {human_size(freed)}\n")
    assert sorted(_ids(lamina)) == ["demo/a:latest", "demo/b:latest"]
    assert old_b not in _ids(lamina).values()
    lamina.assert_consistent()
    # nothing left to prune
    assert lamina.run("image", "prune", "-f").out == "Total reclaimed space: 0B\n"


def test_image_prune_all_removes_every_image(lamina: Lamina, seed: Path) -> None:
    import_seed_images(lamina, seed)
    res = lamina.run("image", "prune", "-a", "--force")
    assert "untagged: demo/a:latest" in res.out and "untagged: demo/b:latest" in res.out
    assert lamina.run("images", "-q").out == ""
    assert lamina.blob_files() == set()
    lamina.assert_consistent()


def test_image_prune_keeps_a_manifest_under_a_tagged_index(lamina: Lamina, seed: Path,
                                                           tmp_path: Path) -> None:
    """A platform's manifest under a tagged index is not dangling, even with an image
    record of its own."""
    from lamina.inspect.remove import dangling_images
    from lamina.store.store import Store

    import_seed_images(lamina, seed)
    layout = tmp_path / "layout"
    lamina.run("save", "demo/a", "-o", layout, "--format", "oci")
    top = json.loads((layout / "index.json").read_text())
    child = {k: v for k, v in top["manifests"][0].items() if k != "annotations"}
    child["platform"] = {"architecture": "amd64", "os": "linux"}
    raw = json.dumps({"schemaVersion": 2, "manifests": [child],
                      "mediaType": "application/vnd.oci.image.index.v1+json"}).encode()
    digest = hashlib.sha256(raw).hexdigest()
    (layout / "blobs" / "sha256" / digest).write_bytes(raw)
    top["manifests"] = [{"mediaType": "application/vnd.oci.image.index.v1+json",
                         "digest": f"sha256:{digest}", "size": len(raw),
                         "annotations": {"org.opencontainers.image.ref.name": "1"}}]
    (layout / "index.json").write_text(json.dumps(top))
    other = Lamina(tmp_path / "other", tmp_path)
    other.run("load", layout, "--name", "x/y")
    with Store(other.root) as store:
        store.meta.add_image(child["digest"], child["mediaType"], child["size"], [], None)
        assert dangling_images(store) == []
    listed = other.run("images", "--json").json()
    blobs = other.blob_files()
    assert other.run("image", "prune", "-f").out == "Total reclaimed space: 0B\n"
    assert other.run("images", "--json").json() == listed
    assert other.blob_files() == blobs


def test_system_prune(lamina: Lamina, seed: Path, tmp_path: Path) -> None:
    ctx = tmp_path / "ctx"
    ctx.mkdir()
    (ctx / "f").write_text("one\n")
    _build(lamina, seed, ctx, app="FROM base\nCOPY f /f\n")
    (ctx / "f").write_text("two\n")
    lamina.run("build", "-t", "app", ctx)  # the first app is left dangling
    assert len(lamina.run("images", "-q").out.split()) == 3
    res = lamina.fail("system", "prune")
    assert "WARNING! This will remove:" in res.out
    res = lamina.run("system", "prune", "-f")
    assert "Deleted Images:" in res.out and "Total reclaimed space: " in res.out
    assert sorted(_ids(lamina)) == ["app:latest", "base:latest"]
    cache = lamina.run("df", "--json").json()
    lamina.assert_consistent()
    res = lamina.run("system", "prune", "-a", "-f")
    assert "Deleted build cache objects:" in res.out
    assert lamina.run("images", "-q").out == ""
    after = lamina.run("df", "--json").json()
    assert after != cache
    assert lamina.blob_files() == set()
    lamina.assert_consistent()


# -- sizes both ways -----------------------------------------------------------------------
def _gunzipped(lamina: Lamina, digest: str) -> int:
    return len(gzip.decompress((lamina.root / "blobs" / "sha256" / digest[7:]).read_bytes()))


def test_sizes_uncompressed_and_compressed(lamina: Lamina, seed: Path, tmp_path: Path
                                           ) -> None:
    import_seed_images(lamina, seed)
    doc = lamina.run("inspect", "demo/a").json()[0]
    layers = doc["Manifest"]["layers"]
    unpacked = sum(_gunzipped(lamina, x["digest"]) for x in layers)
    stored = doc["Manifest"]["config"]["size"] + sum(x["size"] for x in layers)
    row = next(r for r in lamina.run("images", "--json").json() if r["repository"] == "demo/a")
    assert (row["unpacked_size"], row["size"]) == (unpacked, stored)
    assert unpacked > stored
    from lamina.units import human_size

    table = lamina.run("images").out.splitlines()
    assert table[0].split() == ["REPOSITORY", "TAG", "IMAGE", "ID", "CREATED", "SIZE",
                                "COMPRESSED", "LAYERS"]
    cells = next(x for x in table if x.startswith("demo/a")).split("   ")
    assert [c.strip() for c in cells if c.strip()][4:6] == [human_size(unpacked),
                                                            human_size(stored)]
    hist = lamina.run("history", "--json", "demo/a").json()
    assert [(h["unpacked_size"], h["size"]) for h in hist] == [
        (_gunzipped(lamina, x["digest"]), x["size"]) for x in reversed(layers)]
    assert lamina.run("history", "demo/a").out.split("\n")[0].split() == [
        "LAYER", "CREATED", "CREATED", "BY", "SIZE", "COMPRESSED", "COMMENT"]
    # load counts each layer's size while it checks the diff_id, and records it.
    lamina.run("save", "demo/a", "-o", tmp_path / "layout", "--format", "oci")
    other = Lamina(tmp_path / "other", tmp_path)
    other.run("load", tmp_path / "layout")
    db = other.root / "meta.db"

    def recorded() -> int:
        with sqlite3.connect(db) as conn:
            return int(conn.execute("SELECT count(*) FROM layer_sizes").fetchone()[0])

    assert recorded() == len(layers)
    assert other.run("images", "--json").json()[0]["unpacked_size"] == unpacked
    # A store without recorded sizes (a pull, or a store from before) counts them once.
    with sqlite3.connect(db) as conn:
        conn.execute("DELETE FROM layer_sizes")
    assert recorded() == 0
    row2 = other.run("images", "--json").json()[0]
    assert row2["unpacked_size"] == unpacked
    assert recorded() == len(layers)
    # a source outside the store is counted too (not recorded anywhere)
    hist2 = lamina.run("history", "--json", f"oci:{tmp_path / 'layout'}").json()
    assert [h["unpacked_size"] for h in hist2] == [h["unpacked_size"] for h in hist]



def test_sizes_listed_when_the_store_cannot_record_them(seed: Path, tmp_path: Path,
                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    """Counting a size writes it to the store; when that write fails (a full disk, a
    read-only store) the listing still shows the size."""
    from lamina.errors import StoreError
    from lamina.inspect.summary import list_images
    from lamina.store.meta import Metadata
    from lamina.store.store import Store

    src = Lamina(tmp_path / "src", tmp_path)
    src.run("import", "small", seed / "site-a" / "etc", seed / "site-a" / "var")
    want = src.run("images", "--json").json()[0]["unpacked_size"]
    src.run("save", "small", "-o", tmp_path / "layout", "--format", "oci")
    other = Lamina(tmp_path / "other", tmp_path)
    other.run("load", tmp_path / "layout")

    def refuse(self: Metadata, diff_id: str, size: int) -> None:
        raise StoreError("no space left on device while writing store metadata")

    monkeypatch.setattr(Metadata, "set_unpacked_size", refuse)
    with Store(other.root) as store:
        assert [r.unpacked_size for r in list_images(store)] == [want]


def test_sizes_from_snapshots_need_no_count(lamina: Lamina, seed: Path, tmp_path: Path
                                            ) -> None:
    """An image that has been run has snapshots, whose sizes are the uncompressed layers
    (their diff_ids checked when applied): the listing reads them, counting nothing."""
    need_root()
    lamina.run("import", "base", seed / "os")
    want = lamina.run("images", "--json").json()[0]["unpacked_size"]
    lamina.run("save", "base", "-o", tmp_path / "layout", "--format", "oci")
    other = Lamina(tmp_path / "other", tmp_path)
    other.run("load", tmp_path / "layout")
    with sqlite3.connect(other.root / "meta.db") as conn:
        conn.execute("DELETE FROM layer_sizes")   # as after a pull: nothing counted yet
    other.run("run", "--snapshotter", "overlay", "base", "/bin/busybox", "true")
    assert other.run("images", "--json").json()[0]["unpacked_size"] == want
    with sqlite3.connect(other.root / "meta.db") as conn:
        assert conn.execute("SELECT count(*) FROM layer_sizes").fetchone()[0] == 0
