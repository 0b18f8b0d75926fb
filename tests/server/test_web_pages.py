"""The read-only web pages of ``lamina serve``, in-process (httpx's ASGI transport): each
page's content with exact figures for the seed pair, links, 404s, escaping, access."""

from __future__ import annotations

import re
import shutil
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from server_helpers import OCI_INDEX, push_blob, push_image, push_manifest
from server_web_helpers import (
    HOSTILE,
    HOSTILE_FILE,
    boxes,
    hostile_image,
    image_of,
    index_of,
    joins,
    layer_tar,
    links,
    make_seed_store,
    script_tags,
    stored_image,
    svg_of,
    write_auth_config,
)

from lamina.server import ServerConfig, create_app, load_config
from lamina.server.web import MAX_PICTURE
from lamina.store import Store
from lamina.units import human_size as human

pytestmark = pytest.mark.anyio


@pytest.fixture(scope="session")
def seed_root(seed: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    work = tmp_path_factory.mktemp("web-seed")
    make_seed_store(work / "store", seed, work)
    return work / "store"


@pytest.fixture
def seed_store(seed_root: Path, tmp_path: Path) -> Store:
    root = tmp_path / "seed-store"
    shutil.copytree(seed_root, root)
    s = Store(root)
    yield s
    s.close()


@pytest.fixture
async def web(seed_store: Store) -> AsyncIterator[httpx.AsyncClient]:
    async with _client(seed_store) as c:
        yield c


def _client(store: Store, cfg: ServerConfig = ServerConfig(), **kw: Any) -> httpx.AsyncClient:
    app = create_app(store, cfg)
    return httpx.AsyncClient(transport=httpx.ASGITransport(app=app),
                             base_url="http://registry.test", **kw)


async def _page(c: httpx.AsyncClient, path: str, status: int = 200, **kw: Any) -> str:
    r = await c.get(path, **kw)
    assert r.status_code == status, (path, r.status_code, r.text[:2000])
    assert r.headers["content-type"] == "text/html; charset=utf-8"
    assert "script-src" not in r.headers["content-security-policy"]   # no script at all
    assert r.headers["content-security-policy"].startswith("default-src 'none'")
    return r.text


def _rows(html: str, table: str) -> list[str]:
    m = re.search(rf'<table class="{table}">.*?<tbody>(.*?)</tbody>', html, re.S)
    assert m, f"no table {table}"
    return re.findall(r"<tr\b.*?</tr>", m.group(1), re.S)


def _cells(row: str) -> list[str]:
    return [re.sub(r"<[^>]+>", "", c).strip() for c in re.findall(r"<td\b.*?</td>", row, re.S)]


# -- pages and their figures ------------------------------------------------------------
async def test_root_redirects_and_api_unchanged(web: httpx.AsyncClient) -> None:
    for path in ("/", "/ui"):
        r = await web.get(path)
        assert r.status_code == 302 and r.headers["location"] == "/ui/"
    r = await web.get("/v2/")
    assert r.status_code == 200 and r.json() == {}
    r = await web.get("/v2/_catalog")
    assert r.json() == {"repositories": ["demo/a", "demo/b", "demo/site"]}
    r = await web.get("/v2/nothing/here")
    assert r.status_code == 404 and r.json()["errors"][0]["code"] == "NAME_UNKNOWN"
    r = await web.post("/ui/")
    assert r.status_code == 405 and r.headers["allow"] == "GET, HEAD"
    r = await web.head("/ui/")
    assert r.status_code == 200 and r.content == b""


async def test_repositories_page(web: httpx.AsyncClient, seed_store: Store) -> None:
    html = await _page(web, "/ui/")
    a = stored_image(seed_store.root, "docker.io/demo/site:a")
    b = stored_image(seed_store.root, "docker.io/demo/site:b")
    site_size = sum({**a.blob_sizes, **b.blob_sizes}.values())   # each blob once
    rows = {_cells(r)[0]: _cells(r)[1:] for r in _rows(html, "repos")}
    assert rows == {"demo/a": ["1", human(sum(a.blob_sizes.values()))],
                    "demo/b": ["1", human(sum(b.blob_sizes.values()))],
                    "demo/site": ["2", human(site_size)]}
    assert f'title="{site_size} bytes"' in html
    assert links(html, "repo") == ["/ui/r/demo/a", "/ui/r/demo/b", "/ui/r/demo/site"]


async def test_repository_page_draws_the_sharing(web: httpx.AsyncClient,
                                                 seed_store: Store) -> None:
    html = await _page(web, "/ui/r/demo/site")
    svg = svg_of(html)
    shared, unique = boxes(svg, "shared"), boxes(svg, "unique")
    assert len(shared) == 3 and len(unique) == 2          # the seed: 3 shared, 1 each
    assert [r.get("data-depth") for r in shared] == ["1", "2", "3"]
    assert sorted(r.get("data-images") for r in unique) == ["a", "b"]
    assert len(joins(svg)) == 8                            # 4 layers joined per image
    a = stored_image(seed_store.root, "docker.io/demo/site:a")
    b = stored_image(seed_store.root, "docker.io/demo/site:b")
    assert [r.get("data-digest") for r in shared] == \
        [x["digest"] for x in a.manifest["layers"][:3]]    # type: ignore[index]
    assert {r.get("data-digest") for r in unique} == {
        a.manifest["layers"][3]["digest"], b.manifest["layers"][3]["digest"]}  # type: ignore[index]
    assert '<span class="n-shared">3</span>' in html and '<span class="n-unique">2</span>' in html
    assert "Drawing all 2 images" in html
    assert "2 tags, 2 distinct images, 5 distinct layers of which " \
           '<b class="shared-count">3</b> shared' in html
    rows = [_cells(r) for r in _rows(html, "tags")]
    assert [r[1] for r in rows] == ["a", "b"]
    assert [(r[5], r[6]) for r in rows] == [("4", "3"), ("4", "3")]   # layers, shared
    assert rows[0][7] == human(sum(a.blob_sizes.values()))
    # every link on the page works
    for href in links(html, "tag") + links(html, "digest"):
        assert (await web.get(href)).status_code == 200, href
    assert links(html, "tag") == ["/ui/r/demo/site/-/image/a", "/ui/r/demo/site/-/image/b"]


async def test_image_page(web: httpx.AsyncClient, seed_store: Store) -> None:
    html = await _page(web, "/ui/r/demo/site/-/image/a")
    a = stored_image(seed_store.root, "docker.io/demo/site:a")
    rows = _rows(html, "history")
    assert len(rows) == 4
    cells = [_cells(r) for r in rows]
    assert [c[0] for c in cells] == ["4", "3", "2", "1"]                 # newest first
    layers = a.manifest["layers"]                                          # type: ignore[index]
    assert [c[2] for c in cells] == [human(x["size"]) for x in reversed(layers)]
    history = [h["created_by"] for h in a.config["history"]]            # type: ignore[index]
    assert [c[5] for c in cells] == list(reversed(history))
    assert [c[3] for c in cells] == ["only this image"] + ["shared with 1 other image"] * 3
    assert 'class="layer unique" data-layer="4"' in html
    hrefs = links(html, "layer-link")
    m = re.fullmatch(r"/ui/r/demo/site/-/image/(sha256:[0-9a-f]{64})/layer/([1-4])", hrefs[0])
    assert m and m.group(2) == "4"
    assert [h.rsplit("/", 1)[1] for h in hrefs] == ["4", "3", "2", "1"]
    for href in hrefs:
        assert (await web.get(href)).status_code == 200, href
    # by digest, the same page; the tags that name it are listed
    by_digest = await _page(web, f"/ui/r/demo/site/-/image/{m.group(1)}")
    assert _rows(by_digest, "history") == rows
    assert '<a href="/ui/r/demo/site/-/image/a">a</a>' in by_digest


async def test_layer_page(web: httpx.AsyncClient, seed: Path) -> None:
    image = await _page(web, "/ui/r/demo/site/-/image/a")
    top = links(image, "layer-link")[0]
    html = await _page(web, top)
    page_size = (seed / "site-a" / "var/www/html/index.html").stat().st_size
    rows = {_cells(r)[1]: _cells(r) for r in _rows(html, "tree")}
    assert rows["index.html"] == ["A", "index.html", "file", human(page_size)]
    assert rows["var/"][0] == "" and rows["var/"][3] == human(page_size)  # context directory
    assert '<span class="count-added">1 added</span>' in html
    assert "rel=\"prev\"" in html and "rel=\"next\"" not in html
    # layer 3 (the server's config) adds /etc/httpd.conf
    conf = (seed / "config" / "etc/httpd.conf").stat().st_size
    html3 = await _page(web, top[:-1] + "3")
    rows3 = {_cells(r)[1]: _cells(r) for r in _rows(html3, "tree")}
    assert rows3["httpd.conf"] == ["A", "httpd.conf", "file", human(conf)]
    # by tag: redirected to the digest (what a layer page shows never changes)
    r = await web.get("/ui/r/demo/site/-/image/a/layer/4")
    assert r.status_code == 302 and r.headers["location"] == top


async def test_not_found(web: httpx.AsyncClient) -> None:
    a_digest = links(await _page(web, "/ui/r/demo/a"), "digest")[0].rsplit("/", 1)[1]
    for path in ("/ui/r/nope/repo", "/ui/r/demo/site/-/image/zzz",
                 "/ui/r/demo/site/-/image/sha256:" + "0" * 64,
                 "/ui/r/demo/site/-/image/not:a-digest",
                 f"/ui/r/demo/b/-/image/{a_digest}",       # A's manifest is not B's
                 f"/ui/r/demo/a/-/image/{a_digest}/layer/0",
                 f"/ui/r/demo/a/-/image/{a_digest}/layer/5",
                 "/ui/r/Bad..Name", "/ui/nothing", "/ui/r/demo/a/-/other"):
        html = await _page(web, path, 404)
        assert 'class="error"' in html
    assert (await web.get(f"/ui/r/demo/a/-/image/{a_digest}/layer/4")).status_code == 200


# -- hostile text -----------------------------------------------------------------------
async def test_everything_is_escaped(client: httpx.AsyncClient) -> None:
    img = hostile_image()
    await push_image(client, "evil/repo", "latest", img)
    pages = {"/ui/": "", "/ui/r/evil/repo": "", "/ui/r/evil/repo/-/image/latest": "",
             f"/ui/r/evil/repo/-/image/{img.digest}/layer/2": ""}
    for path in pages:
        pages[path] = html = await _page(client, path)
        assert script_tags(html) == 0, path
        assert "<script>" not in html and "<img" not in html, path
    image = pages["/ui/r/evil/repo/-/image/latest"]
    escaped = "&lt;script&gt;alert(&#x27;pwned&#x27;)&lt;/script&gt; &amp; &quot;quoted&quot;"
    assert escaped in image
    # the picture's labels hold the hostile text as text, the SVG stays well-formed
    svg = svg_of(pages["/ui/r/evil/repo"])
    labels = [t.text or "" for t in svg.iter("{http://www.w3.org/2000/svg}text")
              if t.get("class") == "label"]
    assert any(lbl.startswith("<script>") for lbl in labels)
    tree = pages[f"/ui/r/evil/repo/-/image/{img.digest}/layer/2"]
    assert "&lt;img src=x onerror=alert(1)&gt;.html" in tree
    assert "→ &quot;&gt;&lt;script&gt;alert(2)&lt;/script&gt;" in tree
    assert HOSTILE not in image and HOSTILE_FILE not in tree


# -- access -----------------------------------------------------------------------------
async def test_access(seed_store: Store, tmp_path: Path) -> None:
    cfg = load_config(write_auth_config(tmp_path))
    alice, bob = ("alice", "wonderland"), ("bob", "builder")
    img = image_of([layer_tar({"t": b"team"})], ["team layer"])
    async with _client(seed_store, cfg) as c:
        # nobody signed in, no anonymous pull: the browser is asked for credentials
        for path in ("/ui/", "/ui/r/demo/site", "/ui/r/demo/site/-/image/a", "/ui/login"):
            html = await _page(c, path, 401)
            assert "demo/a" not in html
        r = await c.get("/ui/")
        assert r.headers["www-authenticate"] == 'Basic realm="lamina", charset="UTF-8"'
        assert (await c.get("/ui/", auth=("alice", "wrong"))).status_code == 401
        html = await _page(c, "/ui/", auth=alice)
        assert "signed in as alice" in html
        assert links(html, "repo") == ["/ui/r/demo/a", "/ui/r/demo/b", "/ui/r/demo/site"]
        await _page(c, "/ui/r/demo/site/-/image/a", auth=alice)
        r = await c.get("/ui/login", auth=alice)
        assert r.status_code == 302 and r.headers["location"] == "/ui/"
        # bob may pull team/* only: an empty list, and 403 on the seed's pages
        assert links(await _page(c, "/ui/", auth=bob), "repo") == []
        await _page(c, "/ui/r/demo/site", 403, auth=bob)
        await _page(c, "/ui/r/demo/site/-/image/a/layer/1", 403, auth=bob)
    async with _client(seed_store, cfg, auth=alice) as c:   # Basic, in token mode too
        await push_image(c, "team/x", "v1", img)
    async with _client(seed_store, cfg, auth=bob) as c:
        assert links(await _page(c, "/ui/"), "repo") == ["/ui/r/team/x"]
        html = await _page(c, "/ui/r/team/x")
        assert len(boxes(svg_of(html), "unique")) == 1
    # anonymous pull: the pages open without credentials, signing in is still possible
    cfg = load_config(write_auth_config(tmp_path, anonymous_pull=True, token=False))
    async with _client(seed_store, cfg) as c:
        html = await _page(c, "/ui/")
        assert "anonymous" in html and 'href="/ui/login"' in html
        assert links(html, "repo") == ["/ui/r/demo/a", "/ui/r/demo/b", "/ui/r/demo/site",
                                       "/ui/r/team/x"]
        await _page(c, "/ui/r/demo/site/-/image/a")
        await _page(c, "/ui/login", 401)
        assert "signed in as bob" in await _page(c, "/ui/", auth=bob)


# -- many tags, indexes -------------------------------------------------------------------
async def test_many_tags_cap_and_cache(client: httpx.AsyncClient, store: Store) -> None:
    base = layer_tar({"base": b"b" * 1000})
    mid = layer_tar({"mid": b"m" * 500})
    n = 150
    for i in range(n):
        top = layer_tar({f"top{i}": b"t" * (i + 1)})
        img = image_of([base, mid, top], ["base", "mid", f"top {i}"],
                       created=f"2024-01-01T00:{i // 60:02d}:{i % 60:02d}Z")
        if i == 0:
            await push_blob(client, "big/repo", base)
            await push_blob(client, "big/repo", mid)
        await push_blob(client, "big/repo", top)
        await push_blob(client, "big/repo", img.config)
        r = await push_manifest(client, "big/repo", f"t{i:03d}", img.manifest)
        assert r.status_code == 201, r.text
    reads: list[str] = []
    real = store.blobs.read_bytes

    def counting(digest: Any, size: int | None = None) -> bytes:
        reads.append(str(digest))
        return real(digest, size)

    store.blobs.read_bytes = counting  # type: ignore[method-assign]
    html = await _page(client, "/ui/r/big/repo")
    assert len(reads) == 2 * n                     # each manifest and config, once
    svg = svg_of(html)
    assert len(svg.findall(".//{http://www.w3.org/2000/svg}g[@class='image']")) == MAX_PICTURE
    assert len(boxes(svg, "shared")) == 2 and len(boxes(svg, "unique")) == MAX_PICTURE
    assert f"Drawing the {MAX_PICTURE} newest of {n} images" in html
    # the newest: t149 .. t126
    names = sorted(g.get("data-image") or "" for g in
                   svg.findall(".//{http://www.w3.org/2000/svg}g[@class='image']"))
    assert names == [f"t{i:03d}" for i in range(n - MAX_PICTURE, n)]
    rows = [_cells(r) for r in _rows(html, "tags")]
    assert len(rows) == n and all(r[6] == "2" for r in rows)
    # again: nothing is read twice
    reads.clear()
    await _page(client, "/ui/r/big/repo")
    await _page(client, "/ui/")
    assert reads == []
    # pick two in the form
    html = await _page(client, "/ui/r/big/repo", params=[("t", "t000"), ("t", "t007")])
    assert "Drawing the 2 picked images" in html
    assert len(boxes(svg_of(html), "unique")) == 2


async def test_index_tag(client: httpx.AsyncClient) -> None:
    from lamina.image.manifest import current_platform

    here = current_platform()
    other = "arm64" if here.architecture != "arm64" else "amd64"
    base = layer_tar({"base": b"x" * 100})
    imgs = {f"linux/{here.architecture}": image_of([base, layer_tar({"here": b"h"})],
                                                   ["base", "here"],
                                                   platform=(here.architecture, "linux")),
            f"linux/{other}": image_of([base, layer_tar({"there": b"t"})], ["base", "there"],
                                       platform=(other, "linux"))}
    for img in imgs.values():
        await push_image(client, "multi/arch", img.digest, img)
    raw = index_of(imgs)
    r = await push_manifest(client, "multi/arch", "latest", raw, OCI_INDEX)
    assert r.status_code == 201, r.text
    html = await _page(client, "/ui/r/multi/arch/-/image/latest")
    rows = [_cells(r) for r in _rows(html, "platforms")]
    assert [r[0] for r in rows] == list(imgs)
    for href in links(html):
        if "/-/image/sha256:" in href:
            assert (await client.get(href)).status_code == 200
    html = await _page(client, "/ui/r/multi/arch")
    assert "(index)" in html
    svg = svg_of(html)
    assert [r.get("data-images") for r in boxes(svg, "unique")] == ["latest", "latest"]
    assert _cells(_rows(html, "tags")[0])[4] == f"linux/{here.architecture}"
