"""The web pages in a real headless Chromium: Debian's ``chromium`` driven by Playwright
(its bundled driver; no browser download) against a real ``lamina serve`` over a store
holding the seed pair.  Pages load, links work, the picture shows 3 shared and 2 unique
layer boxes in the rendered DOM, a hostile ``created_by`` stays text.  Screenshots are kept
in the test's tmp dir (their paths are printed).  Under CI=true a missing chromium or
Playwright fails the test instead of skipping it."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import httpx
import pytest
from server_helpers import Image, Serve, digest_of
from server_web_helpers import HOSTILE, hostile_image, make_seed_store

from lamina_testing import need

CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic",
                 "--no-first-run", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync"]


def _playwright() -> Any:
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        msg = "playwright is not installed (pip install -e '.[dev]')"
        if os.environ.get("CI") == "true":
            pytest.fail(msg)
        pytest.skip(msg)
    return sync_playwright


def _push(base: str, repo: str, tag: str, image: Image) -> None:
    """Monolithic uploads and the manifest, over plain HTTP (sync)."""
    with httpx.Client(base_url=base, timeout=30) as c:
        for blob in image.blobs():
            r = c.post(f"/v2/{repo}/blobs/uploads/", params={"digest": digest_of(blob)},
                       content=blob, headers={"content-type": "application/octet-stream"})
            assert r.status_code == 201, r.text
        r = c.put(f"/v2/{repo}/manifests/{tag}", content=image.manifest,
                  headers={"content-type": image.media_type})
        assert r.status_code == 201, r.text


@pytest.mark.timeout(180)
def test_pages_in_chromium(seed: Path, tmp_path: Path) -> None:
    chromium = need("chromium")
    sync_playwright = _playwright()
    make_seed_store(tmp_path / "store", seed, tmp_path)
    serve = Serve(tmp_path / "store", tmp_path / "serve.log", "--no-access-log").start()
    shots: list[Path] = []
    try:
        _push(serve.url, "evil/repo", "latest", hostile_image())
        with sync_playwright() as pw:
            ctx = pw.chromium.launch_persistent_context(
                str(tmp_path / "profile"), executable_path=chromium, headless=True,
                args=CHROMIUM_ARGS, viewport={"width": 1200, "height": 900})
            try:
                page = ctx.new_page()
                page.set_default_timeout(20_000)
                problems: list[str] = []
                page.on("pageerror", lambda e: problems.append(f"page error: {e}"))
                page.on("dialog", lambda d: problems.append(f"dialog: {d.message}"))
                page.on("console", lambda m: problems.append(f"console {m.type}: {m.text}")
                        if m.type in ("error", "warning") else None)

                # / redirects to the repositories
                page.goto(serve.url + "/")
                assert page.url == serve.url + "/ui/"
                assert page.locator("a.repo").all_inner_texts() == [
                    "demo/a", "demo/b", "demo/site", "evil/repo"]
                assert page.locator("table.repos tbody tr").count() == 4

                # a repository: the sharing picture, as rendered
                page.locator("a.repo", has_text="demo/site").click()
                page.wait_for_url("**/ui/r/demo/site")
                shared = page.locator("svg.lamina-graph rect.layer.shared")
                unique = page.locator("svg.lamina-graph rect.layer.unique")
                assert shared.count() == 3 and unique.count() == 2
                assert page.locator("svg.lamina-graph circle.join").count() == 8
                assert page.locator("span.n-shared").inner_text() == "3"
                assert page.locator("span.n-unique").inner_text() == "2"
                # drawn once: a shared box spans both columns, twice a unique one's width
                s_box, u_box = shared.first.bounding_box(), unique.first.bounding_box()
                assert s_box and u_box and s_box["width"] > 2 * u_box["width"] > 0
                assert shared.first.is_visible() and unique.last.is_visible()
                shots.append(tmp_path / "web-repository.png")
                page.screenshot(path=str(shots[-1]), full_page=True)

                # an image: its layers with sizes and instructions
                page.locator("table.tags a.tag", has_text="a").first.click()
                page.wait_for_url("**/ui/r/demo/site/-/image/a")
                rows = page.locator("table.history tbody tr.layer")
                assert rows.count() == 4
                assert page.locator("tr.layer.shared").count() == 3
                assert page.locator("tr.layer.unique").count() == 1
                assert page.locator("code.created-by").first.inner_text() == \
                    "lamina import site-a"
                shots.append(tmp_path / "web-image.png")
                page.screenshot(path=str(shots[-1]), full_page=True)

                # the top layer's file tree: index.html added
                page.locator("a.layer-link").first.click()
                page.wait_for_url("**/layer/4")
                added = page.locator("table.tree tr.added td.name")
                assert "index.html" in added.all_inner_texts()
                assert page.locator("span.count-added").inner_text() == "1 added"
                page.locator("a[rel=prev]").click()
                page.wait_for_url("**/layer/3")
                assert "httpd.conf" in page.locator("table.tree tr.added td.name") \
                    .all_inner_texts()
                shots.append(tmp_path / "web-layer.png")
                page.screenshot(path=str(shots[-1]), full_page=True)

                # a hostile created_by is shown as text and runs nothing
                page.goto(serve.url + "/ui/r/evil/repo/-/image/latest")
                assert page.locator("script").count() == 0
                assert HOSTILE in page.locator("code.created-by").all_inner_texts()
                page.goto(serve.url + "/ui/r/evil/repo")
                assert page.locator("script").count() == 0
                assert page.locator("svg.lamina-graph rect.layer.unique").count() == 2
                assert problems == [], problems
            finally:
                ctx.close()
    finally:
        serve.stop()
    for shot in shots:
        assert shot.stat().st_size > 5000, shot
        print(f"screenshot: {shot}")
