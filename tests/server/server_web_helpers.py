"""Helpers for the web page tests: the seed pair in a store, hostile and many-tag images,
and reading the pages' HTML (with the SVG inside) back."""

from __future__ import annotations

import gzip
import json
import re
import xml.etree.ElementTree as ET
from dataclasses import dataclass
from html.parser import HTMLParser
from pathlib import Path

import bcrypt
from server_helpers import OCI_MANIFEST, Image, descriptor, digest_of

from lamina_testing import Lamina, seed_sources, tar_bytes

SVG_NS = {"s": "http://www.w3.org/2000/svg"}
HOSTILE = "<script>alert('pwned')</script> & \"quoted\""
HOSTILE_FILE = "<img src=x onerror=alert(1)>.html"
USERS = {"alice": "wonderland", "bob": "builder"}


def make_seed_store(root: Path, seed: Path, cwd: Path) -> Lamina:
    """demo/site:a and demo/site:b (3 shared layers, 1 each), also tagged demo/a and demo/b:
    the seed story from its snapshots (lamina import)."""
    lamina = Lamina(root, cwd)
    lamina.run("import", "demo/site:a", *seed_sources(seed, "a"))
    lamina.run("import", "demo/site:b", *seed_sources(seed, "b"))
    lamina.run("tag", "demo/site:a", "demo/a")
    lamina.run("tag", "demo/site:b", "demo/b")
    return lamina


@dataclass
class StoredImage:
    manifest: dict[str, object]
    config: dict[str, object]

    @property
    def blob_sizes(self) -> dict[str, int]:
        """digest → size of the config and every layer."""
        out = {self.manifest["config"]["digest"]: self.manifest["config"]["size"]}  # type: ignore[index]
        for layer in self.manifest["layers"]:  # type: ignore[attr-defined]
            out[layer["digest"]] = layer["size"]
        return out


def stored_image(root: Path, name: str) -> StoredImage:
    """An image's manifest and config as the store holds them (read independently of
    lamina: the tags table and the blob files)."""
    import sqlite3

    db = sqlite3.connect(root / "meta.db")
    try:
        (digest,) = db.execute("SELECT digest FROM tags WHERE name=?", (name,)).fetchone()
    finally:
        db.close()

    def blob(d: str) -> dict[str, object]:
        algo, hexa = d.split(":", 1)
        return json.loads((root / "blobs" / algo / hexa).read_bytes())  # type: ignore[no-any-return]

    manifest = blob(digest)
    return StoredImage(manifest, blob(manifest["config"]["digest"]))  # type: ignore[index]


# -- images with real layers (tar+gzip) ---------------------------------------------------
def layer_tar(files: dict[str, bytes | None], symlinks: dict[str, str] | None = None) -> bytes:
    """A gzip'd layer: files (None: a directory), symlinks name → target."""
    return gzip.compress(tar_bytes(sorted(files.items()), sorted((symlinks or {}).items())),
                         mtime=0)


def image_of(layers: list[bytes], created_by: list[str], author: str = "test",
             platform: tuple[str, str] = ("amd64", "linux"),
             created: str = "2024-01-01T00:00:00Z") -> Image:
    """An OCI image of gzip'd tar layers with a config whose history says ``created_by``."""
    diff_ids = [digest_of(gzip.decompress(x)) for x in layers]
    config = json.dumps({
        "architecture": platform[0], "os": platform[1], "author": author, "created": created,
        "rootfs": {"type": "layers", "diff_ids": diff_ids},
        "history": [{"created": created, "created_by": c} for c in created_by],
    }).encode()
    return Image(config, layers)


def hostile_image() -> Image:
    base = layer_tar({"etc/": None, "etc/motd": b"hello\n"})
    evil = layer_tar({f"www/{HOSTILE_FILE}": b"<b>x</b>", "www/": None},
                     {"www/link": "\"><script>alert(2)</script>"})
    return image_of([base, evil], ["base layer", HOSTILE])


def index_of(images: dict[str, Image]) -> bytes:
    """An OCI index of the images by platform ("os/arch")."""
    return json.dumps({"schemaVersion": 2, "mediaType": "application/vnd.oci.image.index.v1+json",
                       "manifests": [descriptor(OCI_MANIFEST, img.manifest, platform={
                           "os": p.split("/")[0], "architecture": p.split("/")[1]})
                           for p, img in images.items()]}).encode()


def write_auth_config(tmp: Path, anonymous_pull: bool = False, token: bool = True) -> Path:
    (tmp / "htpasswd").write_text("".join(
        f"{u}:{bcrypt.hashpw(p.encode(), bcrypt.gensalt(4)).decode()}\n"
        for u, p in USERS.items()))
    (tmp / "serve.toml").write_text(f"""
[auth]
htpasswd = "htpasswd"
token = {str(token).lower()}
token_secret = "test-secret"
anonymous_pull = {str(anonymous_pull).lower()}

[[access]]
who = ["alice"]
repositories = ["*"]
actions = ["*"]

[[access]]
who = ["bob"]
repositories = ["team/*"]
actions = ["pull"]
""")
    return tmp / "serve.toml"


# -- reading pages --------------------------------------------------------------------------
class _Links(HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.links: list[tuple[str, str]] = []   # (href, class)
        self.scripts = 0

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        a = dict(attrs)
        if tag == "a" and a.get("href"):
            self.links.append((a["href"] or "", a.get("class") or ""))
        if tag == "script":
            self.scripts += 1


def links(html: str, cls: str | None = None) -> list[str]:
    p = _Links()
    p.feed(html)
    return [href for href, c in p.links if cls is None or cls in c.split()]


def script_tags(html: str) -> int:
    p = _Links()
    p.feed(html)
    return p.scripts


def svg_of(html: str) -> ET.Element:
    """The page's SVG picture, parsed (it must be well-formed XML)."""
    m = re.search(r"<svg\b.*?</svg>", html, re.S)
    assert m, "no picture on the page"
    return ET.fromstring(m.group(0))


def boxes(svg: ET.Element, kind: str) -> list[ET.Element]:
    return [r for r in svg.iterfind(".//s:rect", SVG_NS)
            if r.get("class", "").split() == ["layer", kind]]


def joins(svg: ET.Element) -> list[ET.Element]:
    return list(svg.iterfind(".//s:circle[@class='join']", SVG_NS))

