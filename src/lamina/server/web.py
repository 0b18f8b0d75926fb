"""The read-only web pages of ``lamina serve``, under ``/ui/``: plain server-rendered HTML
and SVG, no script (the pages say so in their Content-Security-Policy).

    /                                         → redirect to /ui/
    /ui/                                      repositories: tags, size
    /ui/login                                 asks the browser for credentials (Basic)
    /ui/r/<name>                              a repository: its tags, and the sharing
                                              picture across them (``lamina graph``)
    /ui/r/<name>/-/image/<ref>                an image (tag or digest): its layers, with
                                              sizes and instructions (history); an index:
                                              its platforms
    /ui/r/<name>/-/image/<digest>/layer/<n>   layer n (from 1 at the bottom): its file tree
                                              (added, modified, deleted, opaque)

``-`` cannot be a component of a repository name, so ``/-/`` ends the name unambiguously
(the name itself may hold ``/``).

Access is the registry's: every repository page needs ``pull`` there, the repositories
page lists only what the user may pull, anonymous pull applies.  A browser cannot do the
token dance, so the pages always challenge with Basic (htpasswd), which the registry
accepts in token mode too.

Cost on a repository with hundreds of tags: the listing reads manifests and configs only,
each once per process — ``Pages`` caches what it parsed by digest (content-addressed, so
never stale) and the layer headers ``inspect.tree`` reads by diff_id.  The picture draws at
most ``MAX_PICTURE`` images (the newest, or those picked in the table's form): a stack
column is 240px wide, and a drawing of hundreds of columns says nothing.  The table counts
every image's shared layers across the whole repository all the same.  A layer's tree
shows at most ``MAX_TREE_ROWS`` rows.  Pages are built in worker threads: the registry's
hot paths never wait behind a page.
"""

from __future__ import annotations

import re
import threading
from collections import OrderedDict
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from html import escape
from typing import TYPE_CHECKING, TypeVar
from urllib.parse import quote

import anyio.to_thread

from lamina.digest import Digest
from lamina.errors import InvalidManifest, LaminaError
from lamina.image import mediatypes as mt
from lamina.image.config import ImageConfig, parse_config
from lamina.image.manifest import Descriptor, Index, Manifest, current_platform, parse
from lamina.inspect.graph import SHARED_FILL, UNIQUE_FILL, build_drawing, render_svg
from lamina.inspect.relation import stack_notes
from lamina.inspect.summary import history
from lamina.inspect.tree import LayerCache, analyze, change_tree, read_entries
from lamina.layer.tarreader import TarEntry
from lamina.server.errors import RegistryHTTPError
from lamina.server.http import Reply, Rq
from lamina.server.names import TAG, check_name, store_tag
from lamina.store.store import Store
from lamina.transport.base import ImageSource
from lamina.transport.local import StoreTransport
from lamina.transport.resolve import ResolvedImage
from lamina.units import human_size

if TYPE_CHECKING:
    from lamina.server.app import Registry

T = TypeVar("T")

MAX_PICTURE = 24          # images drawn in a repository's picture
MAX_TREE_ROWS = 5000      # rows of a layer's file tree
INFO_CACHE = 8192         # parsed manifests/configs kept, by digest
LAYER_CACHE_ENTRIES = 2_000_000   # tar headers kept, summed over layers
TREE_CACHE = 64           # rendered layer trees kept

_PAGE = re.compile(r"/ui/r/(?P<name>.+?)(?:/-/image/(?P<ref>[^/]+)"
                   r"(?:/layer/(?P<n>[0-9]{1,6}))?)?/?")
_CSP = ("default-src 'none'; style-src 'unsafe-inline'; img-src 'self' data:; "
        "form-action 'self'; base-uri 'none'; frame-ancestors 'none'")


def is_ui(path: str) -> bool:
    return path in ("/", "/ui") or path.startswith("/ui/")


# -- what the pages read, cached by digest ---------------------------------------------
@dataclass(frozen=True)
class Info:
    """One manifest (or index) read once: content-addressed, so never stale."""

    digest: str
    media_type: str
    manifest: Manifest | None = None
    index: Index | None = None
    config: ImageConfig | None = None
    chains: tuple[str, ...] = ()      # chain id of each layer: the stack up to it
    error: str | None = None

    @property
    def image(self) -> ResolvedImage | None:
        if self.manifest is None or self.config is None:
            return None
        return ResolvedImage(Descriptor(self.media_type, Digest.parse(self.digest),
                                        len(self.manifest.raw)), self.manifest, self.config)

    @property
    def size(self) -> int:
        """Config + layers, as stored (``lamina images``); 0 for an index."""
        m = self.manifest
        return m.config.size + sum(x.size for x in m.layers) if m is not None else 0

    @property
    def created(self) -> str:
        return (self.config.created or "") if self.config is not None else ""


class _Layers(LayerCache):
    """``inspect.tree.LayerCache``, bounded and safe across worker threads."""

    def __init__(self, limit: int) -> None:
        super().__init__()
        self._lru: OrderedDict[str, list[TarEntry]] = OrderedDict()
        self._held = 0
        self._limit = limit
        self._lock = threading.Lock()

    def entries(self, source: ImageSource, desc: Descriptor, diff_id: str) -> list[TarEntry]:
        with self._lock:
            got = self._lru.get(diff_id)
            if got is not None:
                self._lru.move_to_end(diff_id)
                return got
        got = read_entries(source, desc)
        with self._lock:
            if diff_id not in self._lru:
                self._lru[diff_id] = got
                self._held += len(got)
                while self._held > self._limit and len(self._lru) > 1:
                    _, old = self._lru.popitem(last=False)
                    self._held -= len(old)
        return got


class Pages:
    """The pages' caches (one per ``Registry``); safe to use from worker threads."""

    def __init__(self, store: Store, max_manifest_bytes: int = 4 * 1024 * 1024) -> None:
        self.store = store
        self.max_manifest_bytes = max_manifest_bytes
        self._infos: OrderedDict[str, Info] = OrderedDict()
        self._trees: OrderedDict[tuple[str, int], str] = OrderedDict()
        self._lock = threading.Lock()
        self.layers = _Layers(LAYER_CACHE_ENTRIES)

    def source(self) -> StoreTransport:
        return StoreTransport(self.store)   # read-only use: open_blob only

    def info(self, digest: str, media_type: str) -> Info:
        with self._lock:
            hit = self._infos.get(digest)
            if hit is not None:
                self._infos.move_to_end(digest)
                return hit
        info = self._read(digest, media_type)
        if info.error is None:     # a missing blob may arrive later: do not remember that
            with self._lock:
                self._infos[digest] = info
                while len(self._infos) > INFO_CACHE:
                    self._infos.popitem(last=False)
        return info

    def _read(self, digest: str, media_type: str) -> Info:
        try:
            d = Digest.parse(digest)
            size = self.store.blobs.size(d)
            if size > self.max_manifest_bytes:
                raise InvalidManifest(f"manifest {digest} is {size} bytes, over the limit")
            doc = parse(self.store.blobs.read_bytes(d, size), media_type,
                        what=f"manifest {digest}")
            if isinstance(doc, Index):
                return Info(digest, doc.media_type, index=doc)
            if doc.config.media_type not in mt.CONFIGS:
                return Info(digest, doc.media_type, manifest=doc,
                            error=f"an artifact ({doc.config.media_type}), not an image")
            config = parse_config(self.store.blobs.read_bytes(doc.config.digest,
                                                              doc.config.size),
                                  what=f"config {doc.config.digest}")
            if len(config.diff_ids) != len(doc.layers):
                raise InvalidManifest(f"image {digest}: {len(doc.layers)} layers but "
                                      f"{len(config.diff_ids)} diff_ids")
            return Info(digest, doc.media_type, manifest=doc, config=config,
                        chains=tuple(str(c) for c in config.chain_ids()))
        except LaminaError as e:
            return Info(digest, media_type, error=str(e))

    def shown(self, info: Info) -> Info:
        """The image an index stands for in listings: this machine's platform, else its
        first image (an index of indexes is followed once more)."""
        for _ in range(3):
            if info.index is None:
                return info
            entries = [x for x in info.index.manifests
                       if x.media_type in mt.MANIFESTS | mt.INDEXES]
            if not entries:
                return Info(info.digest, info.media_type, error="an empty index")
            want = current_platform()
            pick = next((x for x in entries
                         if x.platform is not None and x.platform.matches(want)), entries[0])
            info = self.info(str(pick.digest), pick.media_type)
        return info

    def tree_page(self, key: tuple[str, int]) -> str | None:
        with self._lock:
            return self._trees.get(key)

    def remember_tree(self, key: tuple[str, int], html: str) -> None:
        with self._lock:
            self._trees[key] = html
            while len(self._trees) > TREE_CACHE:
                self._trees.popitem(last=False)


# -- entry point -----------------------------------------------------------------------
class _Page(Exception):
    """An HTML answer other than 200 (redirect, 401, 403, 404, ...)."""

    def __init__(self, status: int, title: str, message: str = "",
                 headers: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.title = title
        self.message = message
        self.headers = headers or {}


async def handle(reg: Registry, rq: Rq) -> Reply:
    path: str = rq.scope["path"]
    try:
        if rq.method not in ("GET", "HEAD"):
            raise _Page(405, "Method not allowed", "these pages are read-only",
                        {"allow": "GET, HEAD"})
        if path in ("/", "/ui"):
            raise _Page(302, "Found", "", {"location": "/ui/"})
        await _identify(reg, rq)
        if path == "/ui/":
            return _html(200, await _repositories(reg, rq), rq)
        if path == "/ui/login":
            if not rq.user and reg.cfg.auth.enabled:
                raise _challenge("sign in to see the repositories you may pull")
            raise _Page(302, "Found", "", {"location": "/ui/"})
        m = _PAGE.fullmatch(path)
        if m is None:
            raise _Page(404, "Not found", f"no page at {path}")
        try:
            repo = check_name(m["name"])
        except RegistryHTTPError:
            raise _Page(404, "Not found", f"{m['name']!r} is not a repository name") from None
        if not reg.may(rq, repo, "pull"):
            if not rq.user and reg.cfg.auth.enabled:
                raise _challenge(f"sign in to see {repo}")
            raise _Page(403, "Forbidden", f"{rq.user or 'anonymous'} may not pull {repo}")
        if m["ref"] is None:
            return _html(200, await _repository(reg, rq, repo), rq)
        if m["n"] is None:
            return _html(200, await _image(reg, rq, repo, m["ref"]), rq)
        return _html(200, await _layer(reg, rq, repo, m["ref"], int(m["n"])), rq)
    except _Page as p:
        body = "" if p.status in (301, 302) else _layout(
            p.title, [], f"<p class=\"error\">{h(p.message)}</p>", rq)
        return _html(p.status, body, rq, p.headers)


def _html(status: int, body: str, rq: Rq, headers: dict[str, str] | None = None) -> Reply:
    return Reply(status, {"content-type": "text/html; charset=utf-8",
                          "content-security-policy": _CSP,
                          "x-content-type-options": "nosniff",
                          "referrer-policy": "no-referrer",
                          "cache-control": "no-cache, private", **(headers or {})},
                 body.encode("utf-8", "replace"))


def _challenge(message: str) -> _Page:
    return _Page(401, "Sign in", message,
                 {"www-authenticate": 'Basic realm="lamina", charset="UTF-8"'})


async def _identify(reg: Registry, rq: Rq) -> None:
    """Who is asking (``rq.user``); wrong credentials ask again, with Basic."""
    if not reg.cfg.auth.enabled:
        return
    try:
        await reg._identify(rq)   # noqa: SLF001 - the registry's own credential check
    except RegistryHTTPError as e:
        raise _challenge(e.message) from None


async def _work(fn: Callable[..., T], *args: object) -> T:
    return await anyio.to_thread.run_sync(fn, *args)


# -- pages ------------------------------------------------------------------------------
@dataclass
class _Tagged:
    """The tags of one repository that name the same manifest or index."""

    digest: str
    media_type: str
    tags: list[str] = field(default_factory=list)
    info: Info | None = None     # what it stands for (an index: one platform)

    @property
    def label(self) -> str:
        return ", ".join(self.tags) if len(self.tags) <= 3 else \
            f"{', '.join(self.tags[:2])} +{len(self.tags) - 2}"


def _tagged(reg: Registry, repo: str) -> list[_Tagged]:
    """The repository's tags grouped by what they name, in tag (byte) order."""
    groups: dict[str, _Tagged] = {}
    for tag in reg.state.tags(repo, None, None):
        found = reg.state.resolve_tag(repo, tag, store_tag(repo, tag))
        if found is None:     # untagged between the two queries
            continue
        digest, media_type, _ = found
        g = groups.setdefault(digest, _Tagged(digest, media_type))
        g.tags.append(tag)
        if g.info is None:
            g.info = reg.pages.shown(reg.pages.info(digest, media_type))
    return list(groups.values())


def _repo_size(reg: Registry, groups: Iterable[_Tagged]) -> int:
    """Bytes of the distinct configs and layers of the tagged images (every platform
    of an index), each blob counted once, as the store holds it."""
    seen: dict[str, int] = {}
    for g in groups:
        todo = [reg.pages.info(g.digest, g.media_type)]
        for _ in range(3):
            nxt: list[Info] = []
            for info in todo:
                if info.index is not None:
                    nxt.extend(reg.pages.info(str(x.digest), x.media_type)
                               for x in info.index.manifests
                               if x.media_type in mt.MANIFESTS | mt.INDEXES)
                elif info.manifest is not None:
                    for b in info.manifest.blobs():
                        seen[str(b.digest)] = b.size
            todo = nxt
    return sum(seen.values())


async def _repositories(reg: Registry, rq: Rq) -> str:
    repos = [r for r in reg.state.repositories() if reg.may(rq, r, "pull")]
    if not repos and not rq.user and reg.cfg.auth.enabled:
        raise _challenge("sign in to see the repositories you may pull")

    def work() -> list[tuple[str, int, int]]:
        out = []
        for r in repos:
            groups = _tagged(reg, r)
            out.append((r, sum(len(g.tags) for g in groups), _repo_size(reg, groups)))
        return out

    rows = await _work(work)
    body = ["<table class=\"repos\"><thead><tr><th>repository</th><th class=\"num\">tags"
            "</th><th class=\"num\">size</th></tr></thead><tbody>"]
    for name, ntags, size in rows:
        body.append(f"<tr><td><a class=\"repo\" href=\"{h(_repo_url(name))}\">{h(name)}</a>"
                    f"</td><td class=\"num\">{ntags}</td>"
                    f"<td class=\"num\" title=\"{size} bytes\">{human_size(size)}</td></tr>")
    body.append("</tbody></table>")
    if not rows:
        body = ["<p>No repositories yet: <code>lamina push</code> or <code>lamina build"
                "</code> one.</p>"]
    note = ("<p class=\"note\">Size: the distinct configs and layers of a repository's "
            "tagged images, each stored once however many images share it.</p>")
    return _layout("Repositories", [], "".join(body) + (note if rows else ""), rq)


async def _repository(reg: Registry, rq: Rq, repo: str) -> str:
    if not reg.state.repo_exists(repo):
        raise _Page(404, "Not found", f"no repository {repo}")
    picked = [v for k, v in rq.query_all() if k == "t" and TAG.fullmatch(v)]

    def work() -> str:
        groups = _tagged(reg, repo)
        return _repository_body(reg, repo, groups, picked)

    return _layout(repo, [(repo, None)], await _work(work), rq)


def _repository_body(reg: Registry, repo: str, groups: list[_Tagged],
                     picked: list[str]) -> str:
    images = [g for g in groups if g.info is not None and g.info.image is not None]
    users: dict[str, int] = {}         # chain id -> images in the repository using it
    sizes: dict[str, int] = {}
    for g in images:
        assert g.info is not None and g.info.manifest is not None
        for chain, desc in zip(g.info.chains, g.info.manifest.layers, strict=True):
            users[chain] = users.get(chain, 0) + 1
            sizes[chain] = desc.size
    shared_chains = [c for c, n in users.items() if n > 1]
    stored = sum(sizes.values())
    unshared = sum(sizes[c] * n for c, n in users.items())

    # The picture: the images picked in the form, else the newest ones.
    if picked:
        want = set(picked)
        drawn = [g for g in images if want & set(g.tags)]
    else:
        drawn = sorted(images, key=lambda g: (g.info.created if g.info else "", g.tags[0]),
                       reverse=True)
    drawn = sorted(drawn[:MAX_PICTURE], key=lambda g: g.tags[0])
    out: list[str] = []
    ntags = sum(len(g.tags) for g in groups)
    out.append(f"<p class=\"summary\">{ntags} tag{_s(ntags)}, {len(images)} distinct "
               f"image{_s(len(images))}, {len(users)} distinct layer{_s(len(users))} of "
               f"which <b class=\"shared-count\">{len(shared_chains)}</b> shared by two or "
               f"more images. Stored: {human_size(stored)} of layers; without sharing it would "
               f"be {human_size(unshared)}.</p>")
    if drawn:
        drawing = build_drawing([g.label for g in drawn],
                                [g.info.image for g in drawn if g.info and g.info.image])
        nodes = drawing.nodes()
        n_shared = sum(1 for n in nodes if n.shared)
        svg = render_svg(drawing).split("\n", 1)[1]   # no XML declaration inside HTML
        what = (f"the {len(drawn)} picked" if picked else
                f"the {len(drawn)} newest of {len(images)}" if len(images) > len(drawn)
                else f"all {len(drawn)}")
        out.append("<h2>Sharing</h2>")
        out.append(
            f"<p class=\"legend\">Drawing {what} images "
            f"(at most {MAX_PICTURE}; pick others in the table). "
            f"<span><i class=\"swatch\" style=\"background:{SHARED_FILL}\"></i>shared layer "
            f"(<span class=\"n-shared\">{n_shared}</span>): stored once, joined by a dot "
            f"to every image using it</span> "
            f"<span><i class=\"swatch\" style=\"background:{UNIQUE_FILL}\"></i>unique layer "
            f"(<span class=\"n-unique\">{len(nodes) - n_shared}</span>)</span> "
            f"Heights grow with the square root of a layer's size.</p>")
        out.append(f"<div class=\"picture\">{svg}</div>")
    out.append("<h2>Tags</h2><form method=\"get\" action=\"\">")
    out.append("<table class=\"tags\"><thead><tr><th>draw</th><th>tag</th><th>image</th>"
               "<th>created</th><th>platform</th><th class=\"num\">layers</th>"
               "<th class=\"num\">shared</th><th class=\"num\">size</th></tr></thead><tbody>")
    drawn_digests = {g.digest for g in drawn}
    for g in groups:
        info = g.info
        image_url = _image_url(repo, g.digest)
        short = g.digest.split(":", 1)[-1][:12]
        index = " (index)" if g.media_type in mt.INDEXES else ""
        for tag in g.tags:
            check = (f"<input type=\"checkbox\" name=\"t\" value=\"{h(tag)}\""
                     f"{' checked' if g.digest in drawn_digests else ''}>")
            cells = (f"<td>{check}</td><td><a class=\"tag\" href=\"{h(_image_url(repo, tag))}"
                     f"\">{h(tag)}</a></td><td><a class=\"digest\" href=\"{h(image_url)}\">"
                     f"<code>{h(short)}</code></a>{index}</td>")
            if info is None or info.manifest is None or info.config is None:
                why = info.error if info is not None else "unreadable"
                out.append(f"<tr class=\"broken\">{cells}<td colspan=\"5\">"
                           f"{h(why or 'unreadable')}</td></tr>")
                continue
            n = len(info.manifest.layers)
            shared = sum(1 for c in info.chains if users.get(c, 0) > 1)
            out.append(f"<tr>{cells}<td>{h(_when(info.created))}</td>"
                       f"<td>{h(str(info.config.platform))}</td><td class=\"num\">{n}</td>"
                       f"<td class=\"num\">{shared}</td>"
                       f"<td class=\"num\" title=\"{info.size} bytes\">{human_size(info.size)}</td>"
                       f"</tr>")
    out.append("</tbody></table>")
    if images:
        out.append("<p><button type=\"submit\">Draw the checked images</button></p>")
    out.append("</form>")
    out.append("<p class=\"note\">Shared: the image's layers that another image of this "
               "repository has too, on the same layers below (the same chain id). Size: "
               "config and layers, compressed, as stored.</p>")
    return "".join(out)


async def _member(reg: Registry, repo: str, ref: str) -> tuple[str, str, list[str]]:
    """(digest, media type, tags naming it) of ``ref`` in ``repo``; 404 otherwise."""
    if ":" in ref:
        try:
            digest = str(Digest.parse(ref))
        except LaminaError:
            raise _Page(404, "Not found", f"{ref!r} is not a digest") from None
        hit = reg.state.member(repo, digest)
        if hit is None and await reg.adopt_repo(repo):
            hit = reg.state.member(repo, digest)
        if hit is None:
            raise _Page(404, "Not found", f"no image {digest} in {repo}")
        media_type = hit[0]
    else:
        found = reg.state.resolve_tag(repo, ref, store_tag(repo, ref)) \
            if TAG.fullmatch(ref) else None
        if found is None:
            raise _Page(404, "Not found", f"no tag {ref!r} in {repo}")
        digest, media_type, _ = found
    tags = [t for t in reg.state.tags(repo, None, None)
            if (r := reg.state.resolve_tag(repo, t, store_tag(repo, t))) and r[0] == digest]
    return digest, media_type, tags


async def _image(reg: Registry, rq: Rq, repo: str, ref: str) -> str:
    digest, media_type, tags = await _member(reg, repo, ref)
    info = await _work(reg.pages.info, digest, media_type)
    title = f"{repo}:{ref}" if ":" not in ref else f"{repo}@{digest[:19]}…"
    crumbs = [(repo, _repo_url(repo)), (ref if ":" not in ref else digest[:19] + "…", None)]
    facts = [("digest", f"<code>{h(digest)}</code>"),
             ("tags", ", ".join(f"<a href=\"{h(_image_url(repo, t))}\">{h(t)}</a>"
                                for t in tags) or "none")]
    if info.index is not None:
        rows = []
        for d in info.index.manifests:
            plat = str(d.platform) if d.platform else "(no platform)"
            link = (f"<a href=\"{h(_image_url(repo, str(d.digest)))}\"><code>"
                    f"{h(str(d.digest))}</code></a>"
                    if d.media_type in mt.MANIFESTS | mt.INDEXES
                    else f"<code>{h(str(d.digest))}</code>")
            rows.append(f"<tr><td>{h(plat)}</td><td>{link}</td><td>{h(d.media_type)}</td>"
                        f"<td class=\"num\">{human_size(d.size)}</td></tr>")
        body = (_facts(facts + [("media type", h(info.media_type))]) +
                "<h2>Platforms</h2><table class=\"platforms\"><thead><tr><th>platform</th>"
                "<th>manifest</th><th>media type</th><th class=\"num\">size</th></tr>"
                "</thead><tbody>" + "".join(rows) + "</tbody></table>")
        return _layout(title, crumbs, body, rq)
    image = info.image
    if image is None or info.manifest is None or info.config is None:
        raise _Page(404 if info.error and "not found" in info.error.lower() else 500,
                    "Unreadable image", f"{digest}: {info.error}")

    def shared_counts() -> dict[str, int]:
        users: dict[str, int] = {}
        for g in _tagged(reg, repo):
            if g.info is not None and g.info.digest != info.digest:
                for c in set(g.info.chains):
                    users[c] = users.get(c, 0) + 1
        return users

    users = await _work(shared_counts)
    cfg = info.config
    facts += [("media type", h(info.media_type)),
              ("image id", f"<code>{h(str(info.manifest.config.digest))}</code>"),
              ("created", h(_when(cfg.created)) or "unknown"),
              ("platform", h(str(cfg.platform))),
              ("size", f"{human_size(info.size)} ({info.size} bytes) in "
                       f"{len(info.manifest.layers)} layers")]
    # What rebase and squash recorded: the base, each move, each merge.
    facts += [("stack", f"<span class=\"stack-note\">{h(note)}</span>")
              for note in stack_notes(image)]
    rows = []
    # history() is newest first; layers are numbered from 1 at the bottom
    hist = history(image)
    number = sum(1 for r in hist if not r.empty_layer)
    for row in hist:
        when = h(_when(row.created))
        text = h(row.created_by) or "<span class=\"muted\">(no history)</span>"
        comment = h(row.comment)
        if row.empty_layer:
            rows.append(f"<tr class=\"config-only\"><td></td><td class=\"muted\">config only"
                        f"</td><td class=\"num\">0B</td><td></td><td>{when}</td>"
                        f"<td><code class=\"created-by\">{text}</code></td>"
                        f"<td>{comment}</td></tr>")
            continue
        n = number
        number -= 1
        if row.layer is None or n > len(info.manifest.layers):
            rows.append(f"<tr><td></td><td class=\"muted\">(no layer)</td><td></td><td></td>"
                        f"<td>{when}</td><td><code class=\"created-by\">{text}</code></td>"
                        f"<td>{comment}</td></tr>")
            continue
        chain = info.chains[n - 1]
        others = users.get(chain, 0)
        kind = "shared" if others else "unique"
        share = (f"shared with {others} other image{_s(others)}" if others
                 else "only this image")
        short = row.layer.split(":", 1)[-1][:12]
        rows.append(f"<tr class=\"layer {kind}\" data-layer=\"{n}\"><td class=\"num\">{n}</td>"
                    f"<td><a class=\"layer-link\" href=\"{h(_layer_url(repo, digest, n))}\">"
                    f"<code>{h(short)}</code></a></td>"
                    f"<td class=\"num\" title=\"{row.size} bytes\">{human_size(row.size)}</td>"
                    f"<td>{share}</td><td>{when}</td>"
                    f"<td><code class=\"created-by\">{text}</code></td><td>{comment}</td></tr>")
    body = (_facts(facts) + "<h2>Layers</h2><p class=\"note\">Newest first, as "
            "<code>lamina history</code>; layers are numbered from 1 at the bottom. "
            "Follow a layer to its file tree.</p>"
            "<table class=\"history\"><thead><tr><th class=\"num\">#</th><th>layer</th>"
            "<th class=\"num\">size</th><th>in this repository</th><th>created</th>"
            "<th>created by</th><th>comment</th></tr></thead><tbody>" + "".join(rows) +
            "</tbody></table>")
    return _layout(title, crumbs, body, rq)


_KIND_MARK = {"added": "A", "modified": "M", "deleted": "D", "opaque": "O"}


async def _layer(reg: Registry, rq: Rq, repo: str, ref: str, n: int) -> str:
    digest, media_type, _ = await _member(reg, repo, ref)
    if ":" not in ref:   # layer pages are by image digest: what they show never changes
        raise _Page(302, "Found", "", {"location": _layer_url(repo, digest, n)})
    info = await _work(reg.pages.info, digest, media_type)
    image = info.image
    if image is None or info.manifest is None:
        raise _Page(404, "Not found", f"{digest} is not an image with layers")
    if not 1 <= n <= len(info.manifest.layers):
        raise _Page(404, "Not found", f"{repo}@{digest} has no layer {n} "
                    f"(it has {len(info.manifest.layers)})")
    key = (digest, n)
    body = reg.pages.tree_page(key)
    if body is None:
        body = await _work(_layer_body, reg, repo, digest, image, n)
        reg.pages.remember_tree(key, body)
    crumbs = [(repo, _repo_url(repo)), (digest[:19] + "…", _image_url(repo, digest)),
              (f"layer {n}", None)]
    return _layout(f"{repo}@{digest[:19]}… layer {n}", crumbs, body, rq)


def _layer_body(reg: Registry, repo: str, digest: str, image: ResolvedImage, n: int) -> str:
    analysis = analyze(reg.pages.source(), image, upto=n, cache=reg.pages.layers)
    layer = analysis.layers[n - 1]
    rows = change_tree(layer)
    counts = {k: layer.count(k) for k in ("added", "modified", "deleted", "opaque")}
    facts = [("layer", f"{n} of {len(image.manifest.layers)}"),
             ("digest", f"<code>{h(str(layer.descriptor.digest))}</code>"),
             ("diff id", f"<code>{h(layer.diff_id)}</code>"),
             ("size", f"{human_size(layer.descriptor.size)} compressed, "
                      f"{human_size(layer.files_size)} of files in {layer.entries} entries"),
             ("created by", f"<code class=\"created-by\">{h(layer.created_by)}</code>"
                            if layer.created_by else "<span class=\"muted\">(no history)</span>"),
             ("changes", ", ".join(f"<span class=\"count-{k}\">{v} {k}</span>"
                                   for k, v in counts.items()))]
    nav = []
    if n > 1:
        nav.append(f"<a rel=\"prev\" href=\"{h(_layer_url(repo, digest, n - 1))}\">"
                   f"← layer {n - 1}</a>")
    if n < len(image.manifest.layers):
        nav.append(f"<a rel=\"next\" href=\"{h(_layer_url(repo, digest, n + 1))}\">"
                   f"layer {n + 1} →</a>")
    out = [_facts(facts), f"<p class=\"nav\">{' · '.join(nav)}</p>" if nav else "",
           "<h2>Files</h2>"]
    if not rows:
        out.append("<p>This layer changes nothing.</p>")
    else:
        out.append("<table class=\"tree\"><thead><tr><th></th><th>path</th><th>type</th>"
                   "<th class=\"num\">size</th></tr></thead><tbody>")
        for r in rows[:MAX_TREE_ROWS]:
            kind = r.kind or "context"
            mark = _KIND_MARK.get(r.kind or "", "")
            name = h(r.name) + ("/" if r.type == "dir" else "")
            if r.link:
                name += f" <span class=\"link\">→ {h(r.link)}</span>"
            what = {"deleted": "deleted", "opaque": "opaque dir"}.get(kind, r.type)
            out.append(f"<tr class=\"{kind}\" title=\"{h(r.path)}\"><td class=\"mark\">{mark}"
                       f"</td><td class=\"name\" style=\"padding-left:{0.4 + 1.2 * r.depth:.1f}"
                       f"em\">{name}</td><td>{h(what)}</td>"
                       f"<td class=\"num\" title=\"{r.size} bytes\">{human_size(r.size)}</td></tr>")
        out.append("</tbody></table>")
        if len(rows) > MAX_TREE_ROWS:
            out.append(f"<p class=\"note\">The first {MAX_TREE_ROWS} of {len(rows)} rows; "
                       f"<code>lamina layers IMAGE --layer {n}</code> lists them all.</p>")
    out.append("<p class=\"note\">A added, M modified (a lower version exists), D deleted "
               "(a whiteout; its size is what it removes), O opaque directory (everything "
               "below it hidden). A directory's size is what the layer writes under it.</p>")
    return "".join(out)


# -- HTML pieces --------------------------------------------------------------------------
def h(value: object) -> str:
    """Escaped for HTML text and attribute values alike."""
    return escape(str(value), quote=True)


def _s(n: int) -> str:
    return "" if n == 1 else "s"


def _when(created: str | None) -> str:
    return (created or "")[:19].replace("T", " ")


def _repo_url(repo: str) -> str:
    return "/ui/r/" + quote(repo, safe="/")


def _image_url(repo: str, ref: str) -> str:
    return f"{_repo_url(repo)}/-/image/{quote(ref, safe=':')}"


def _layer_url(repo: str, digest: str, n: int) -> str:
    return f"{_image_url(repo, digest)}/layer/{n}"


def _facts(items: Sequence[tuple[str, str]]) -> str:
    """A definition list; the values are HTML already escaped by the caller."""
    return "<dl class=\"facts\">" + "".join(f"<dt>{h(k)}</dt><dd>{v}</dd>"
                                            for k, v in items) + "</dl>"


_STYLE = """
body { font-family: DejaVu Sans, Helvetica, Arial, sans-serif; margin: 0; color: #222; }
header { background: #24323f; color: #eee; padding: .6em 1.5em; display: flex;
         justify-content: space-between; align-items: baseline; }
header a { color: #fff; }
nav.crumbs a, nav.crumbs span { margin-right: .3em; }
main { padding: .5em 1.5em 2em; }
h1 { font-size: 1.4em; word-break: break-all; }
h2 { font-size: 1.15em; margin-top: 1.4em; }
table { border-collapse: collapse; }
td, th { padding: .2em .6em; border-bottom: 1px solid #ddd; text-align: left;
         vertical-align: top; }
.num { text-align: right; white-space: nowrap; }
code { font-size: .92em; }
code.created-by { white-space: pre-wrap; word-break: break-word; }
.muted, .note { color: #666; }
.note { font-size: .9em; }
.error { color: #a00; }
dl.facts { display: grid; grid-template-columns: max-content auto; gap: .2em 1em; }
dl.facts dt { font-weight: bold; }
dl.facts dd { margin: 0; word-break: break-all; }
.picture { overflow-x: auto; border: 1px solid #ddd; padding: .4em; }
.swatch { display: inline-block; width: 1em; height: 1em; vertical-align: middle;
          border: 1px solid #333; margin: 0 .3em 0 .8em; }
tr.layer.shared td:first-child { border-left: 4px solid #2f6f9f; }
tr.layer.unique td:first-child { border-left: 4px solid #b35806; }
tr.config-only { color: #777; }
table.tree td { padding-top: .05em; padding-bottom: .05em; font-family: monospace; }
table.tree tr.added .mark { color: #1a7f37; font-weight: bold; }
table.tree tr.modified .mark { color: #9a6700; font-weight: bold; }
table.tree tr.deleted .mark, table.tree tr.opaque .mark { color: #cf222e; font-weight: bold; }
table.tree tr.deleted .name { text-decoration: line-through; }
table.tree tr.context { color: #777; }
.link { color: #555; }
"""


def _layout(title: str, crumbs: Sequence[tuple[str, str | None]], body: str, rq: Rq) -> str:
    parts = ["<a href=\"/ui/\">repositories</a>"]
    for text, url in crumbs:
        parts.append(f"<a href=\"{h(url)}\">{h(text)}</a>" if url else
                     f"<span>{h(text)}</span>")
    who = (f"signed in as {h(rq.user)}" if rq.user else
           "anonymous · <a href=\"/ui/login\">sign in</a>")
    return (f"<!doctype html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">"
            f"<meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">"
            f"<link rel=\"icon\" href=\"data:,\">"   # no /favicon.ico request
            f"<title>{h(title)} · lamina</title><style>{_STYLE}</style></head>\n<body>"
            f"<header><nav class=\"crumbs\"><b>lamina</b> · {' / '.join(parts)}</nav>"
            f"<span class=\"who\">{who}</span></header>\n"
            f"<main><h1>{h(title)}</h1>\n{body}\n</main></body></html>\n")
