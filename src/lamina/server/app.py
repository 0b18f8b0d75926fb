"""The registry as one ASGI application over a ``Store``.

``Registry`` holds what every handler needs (the store, the server tables, upload
sessions, the rolling lease, the access policy) and routes each request:

    GET     /v2/                                   API version check (auth probe)
    GET     /v2/_catalog                           repositories
    GET     /v2/<name>/tags/list                   tags
    GET/HEAD/PUT/DELETE /v2/<name>/manifests/<ref> manifests by tag or digest
    GET/HEAD/DELETE     /v2/<name>/blobs/<digest>  blobs
    POST    /v2/<name>/blobs/uploads/              start (?digest= monolithic, ?mount=)
    GET/PATCH/PUT/DELETE /v2/<name>/blobs/uploads/<uuid>   status, chunk, finish, cancel
    GET     /v2/<name>/referrers/<digest>          referrers (?artifactType=)
    GET/POST /token                                the built-in token service
    GET     /, /ui/...                             the read-only web pages (web.py)

Order of checks for a request: rate limit (TOOMANYREQUESTS), route (404/405), name
(NAME_INVALID), credentials (UNAUTHORIZED with a challenge), permission (a challenge
for the scope when more credentials could help, else DENIED), then the handler.
Handlers raise ``RegistryHTTPError``; this module turns it, and any ``LaminaError`` the
store raises, into the spec's error body.  A bug answers 500 without a traceback on
the wire (it is logged).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import re
import secrets
import time
from collections import OrderedDict
from collections.abc import Awaitable, Callable
from typing import Any

import anyio.to_thread

from lamina.digest import Digest
from lamina.errors import LaminaError, StoreBusy, Unsupported
from lamina.server import blobs, discovery, manifests, web
from lamina.server.auth import (
    ANONYMOUS,
    Grant,
    Htpasswd,
    Policy,
    Tokens,
    parse_basic,
    parse_scope,
)
from lamina.server.config import ServerConfig
from lamina.server.errors import RegistryHTTPError
from lamina.server.http import JSON, Reply, Rq, send_reply
from lamina.server.metadata import Db, MetadataUnavailable
from lamina.server.names import check_name
from lamina.server.ratelimit import RateLimiter
from lamina.server.state import RegistryState
from lamina.server.storage import BlobStorage, StorageUnavailable, open_storage
from lamina.server.storage.local import LocalStorage
from lamina.server.uploads import Uploads
from lamina.store.store import Store

log = logging.getLogger("lamina.server")

Handler = Callable[["Registry", Rq], Awaitable[Reply]]

# (pattern, {method: (handler, action)}); the name is greedy so that a repository may
# itself contain a component called "blobs" or "manifests".
_ROUTES: list[tuple[re.Pattern[str], dict[str, tuple[Handler, str]]]] = [
    (re.compile(r"/v2/(.+)/manifests/([^/]+)"), {
        "GET": (manifests.get_manifest, "pull"), "HEAD": (manifests.get_manifest, "pull"),
        "PUT": (manifests.put_manifest, "push"),
        "DELETE": (manifests.delete_manifest, "delete")}),
    (re.compile(r"/v2/(.+)/blobs/uploads(?:/([^/]*))?"), {
        "POST": (blobs.start_upload, "push"), "GET": (blobs.upload_status, "push"),
        "PATCH": (blobs.patch_upload, "push"), "PUT": (blobs.finish_upload, "push"),
        "DELETE": (blobs.cancel_upload, "push")}),
    (re.compile(r"/v2/(.+)/blobs/([^/]+)"), {
        "GET": (blobs.get_blob, "pull"), "HEAD": (blobs.get_blob, "pull"),
        "DELETE": (blobs.delete_blob, "delete")}),
    (re.compile(r"/v2/(.+)/tags/list"), {"GET": (discovery.list_tags, "pull")}),
    (re.compile(r"/v2/(.+)/referrers/([^/]+)"), {"GET": (discovery.list_referrers, "pull")}),
]

MANIFEST_CACHE_BYTES = 64 * 1024 * 1024
_HOST = re.compile(r"[A-Za-z0-9.\-]+(:\d+)?|\[[0-9A-Fa-f:.]+\](:\d+)?")


class Registry:
    """The application.  ``await startup()`` / ``shutdown()`` (ASGI lifespan) run the
    background expiry of upload sessions; everything else works without them."""

    def __init__(self, store: Store, cfg: ServerConfig = ServerConfig(),
                 own_store: bool = False) -> None:
        self.store = store
        self.cfg = cfg
        self.own_store = own_store
        self.state = RegistryState(open_metadata(store, cfg))
        self.pages = web.Pages(store, cfg.limits.max_manifest_bytes)
        self.lease = self.state.db.lease(cfg.metadata.lease_ttl)
        self.blobstore = open_storage(cfg.storage, store, shared=self.state.db.shared)
        # Manifests stay in the store with the SQLite metadata; with replicas they are
        # in the shared blob storage, where every replica reads them.
        self.manifest_blobs: BlobStorage = self.blobstore if self.state.db.shared \
            else LocalStorage(store)
        self.uploads = Uploads(self.blobstore, self.state, self.lease, cfg.limits.upload_ttl,
                               cfg.limits.max_blob_bytes)
        self.policy = Policy(cfg.auth)
        self.htpasswd = Htpasswd(cfg.auth.htpasswd) if cfg.auth.htpasswd else None
        secret = cfg.auth.token_secret
        if secret is None and self.state.db.shared and cfg.auth.enabled:
            # Replicas sign with one key, kept in the shared database: a token one
            # issues, every other accepts.
            secret = self.state.setting("token_secret", secrets.token_hex(32))
        self.tokens = Tokens(cfg.auth.service, cfg.auth.token_ttl, secret)
        self.limiter = RateLimiter(cfg.limits.rate, cfg.limits.burst) if cfg.limits.rate \
            else None
        self.manifest_lock = asyncio.Lock()
        self._cache: OrderedDict[str, bytes] = OrderedDict()
        self._cache_bytes = 0
        self._adopt_checked: dict[str, float] = {}
        self._tasks: list[asyncio.Task[None]] = []

    # -- lifespan ----------------------------------------------------------------------
    async def startup(self) -> None:
        self._tasks.append(asyncio.create_task(self._expire_loop()))
        if self.cfg.metadata.gc_interval > 0:
            self._tasks.append(asyncio.create_task(self._gc_loop(self.cfg.metadata.gc_interval)))

    async def shutdown(self) -> None:
        for task in self._tasks:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        self._tasks.clear()
        self.uploads.forget()
        self.state.close()
        self.blobstore.close()
        if self.own_store:
            self.store.close()

    async def _expire_loop(self) -> None:
        period = max(1.0, min(60.0, self.cfg.limits.upload_ttl / 4))
        while True:
            await asyncio.sleep(period)
            try:
                await self.uploads.expire()
            except Exception:  # noqa: BLE001 - keep expiring; a busy store is transient
                log.exception("expiring upload sessions failed")

    async def _gc_loop(self, period: float) -> None:
        """``[metadata] gc_interval``: online gc on a schedule.  Replicas each keep the
        schedule; whoever finds another collecting skips its turn (server/gc.py)."""
        from lamina.server.gc import run

        while True:
            await asyncio.sleep(period)
            try:
                report = await anyio.to_thread.run_sync(
                    lambda: run(self.store, self.blobstore, self.state.db,
                                self.cfg.metadata.lease_ttl, wait=False))
            except Exception as e:  # noqa: BLE001 - a turn missed; the next one tries again
                log.warning("scheduled gc failed: %s", e)
                continue
            if report.ran and report.blobs_removed:
                log.info("gc removed %d blobs (%d bytes)", len(report.blobs_removed),
                         report.bytes_freed)

    # -- helpers for handlers ------------------------------------------------------------
    def manifest_bytes(self, digest: str) -> bytes | None:
        """A manifest's bytes from the cache or the local store (a quick file read, done
        on the event loop); None as well when they are in S3 — ``load_manifest``, in a
        worker thread, reads those."""
        raw = self._cache.get(digest)
        if raw is not None or self.manifest_blobs.name != "local":
            return raw
        return self.load_manifest(digest)

    def load_manifest(self, digest: str) -> bytes | None:
        """Blocking: a manifest's bytes from where manifests are kept (``manifest_blobs``:
        the store with SQLite metadata, the shared blob storage with replicas)."""
        try:
            raw = self.manifest_blobs.read_bytes(Digest.parse(digest),
                                                 self.cfg.limits.max_manifest_bytes)
        except (OSError, LaminaError):
            return None
        if raw is not None:
            self.remember_manifest(digest, raw)
        return raw

    def remember_manifest(self, digest: str, raw: bytes) -> None:
        """Manifests are content-addressed: a cached copy is never stale."""
        if digest in self._cache or len(raw) > MANIFEST_CACHE_BYTES // 64:
            return
        self._cache[digest] = raw
        self._cache_bytes += len(raw)
        while self._cache_bytes > MANIFEST_CACHE_BYTES:
            _, old = self._cache.popitem(last=False)
            self._cache_bytes -= len(old)

    async def adopt_repo(self, repo: str) -> bool:
        """Adopt images tagged under ``repo`` by other means (build, load, pull) that
        have no membership yet.  Returns whether anything was adopted."""
        pending = self.state.unadopted_tags(repo)
        if not pending:
            return False

        def work() -> None:
            for _tag, digest, media_type in pending:
                manifests.adopt(self, repo, digest, media_type)

        async with self.manifest_lock:
            await anyio.to_thread.run_sync(work)
        return True

    def may(self, rq: Rq, repo: str, action: str) -> bool:
        grant: Grant | None = rq.scope.get("lamina.grant")
        if grant is not None:
            return action in grant.access.get(repo, frozenset())
        return action in self.policy.allowed(rq.user, repo)

    # -- auth ----------------------------------------------------------------------------
    def _realm(self, rq: Rq) -> str:
        if self.cfg.auth.realm:
            return self.cfg.auth.realm
        host = rq.headers.get("host", "")
        if not _HOST.fullmatch(host):
            host = f"{self.cfg.host}:{self.cfg.port}"
        scheme = "https" if self.cfg.tls_cert else "http"
        return f"{scheme}://{host}/token"

    def _challenge(self, rq: Rq, scope: str | None, error: str | None = None) -> str:
        if not self.cfg.auth.token:
            return 'Basic realm="lamina"'
        out = f'Bearer realm="{self._realm(rq)}",service="{self.cfg.auth.service}"'
        if scope:
            out += f',scope="{scope}"'
        if error:
            out += f',error="{error}"'
        return out

    def _unauthorized(self, rq: Rq, scope: str | None, message: str,
                      error: str | None = None) -> RegistryHTTPError:
        return RegistryHTTPError(401, "UNAUTHORIZED", message, None,
                                 {"www-authenticate": self._challenge(rq, scope, error)})

    async def _identify(self, rq: Rq) -> bool:
        """Set ``rq.user`` (and a bearer grant); returns whether credentials were sent."""
        header = rq.headers.get("authorization")
        if not header:
            return False
        scheme = header.split(" ", 1)[0].lower()
        if scheme == "bearer":
            grant = self.tokens.verify(header[7:].strip())
            if grant is None:
                raise self._unauthorized(rq, None, "invalid or expired token",
                                         "invalid_token")
            rq.user = grant.user
            rq.scope["lamina.grant"] = grant
            return True
        creds = parse_basic(header)
        if creds is None or self.htpasswd is None:
            raise self._unauthorized(rq, None, "unsupported credentials")
        if not self.htpasswd.cached(*creds) and not await anyio.to_thread.run_sync(
                self.htpasswd.check, *creds):
            raise self._unauthorized(rq, None, "wrong user name or password")
        rq.user = creds[0]
        return True

    async def _authorize(self, rq: Rq, repo: str | None, action: str) -> None:
        if not self.cfg.auth.enabled:
            return
        sent = await self._identify(rq)
        if repo is None:             # /v2/ and /v2/_catalog: who you are is enough
            if sent or self.cfg.auth.anonymous_pull:
                return
            raise self._unauthorized(rq, None, "authentication required")
        if self.may(rq, repo, action):
            return
        wanted = {"push": "pull,push", "pull": "pull", "delete": "delete"}[action]
        scope = f"repository:{rq.name or repo}:{wanted}"
        if not sent:
            raise self._unauthorized(rq, scope, "authentication required")
        if "lamina.grant" in rq.scope and action in self.policy.allowed(rq.user, repo):
            # the user may, the token just does not say so: ask for a wider token
            raise self._unauthorized(rq, scope, "token lacks the scope",
                                     "insufficient_scope")
        raise RegistryHTTPError(403, "DENIED",
                                f"{rq.user or 'anonymous'} may not {action} {repo}")

    # -- the token service ----------------------------------------------------------------
    async def token(self, rq: Rq) -> Reply:
        if not self.cfg.auth.enabled:
            raise RegistryHTTPError(404, "UNSUPPORTED", "this registry has no token service")
        user = ANONYMOUS
        scopes = [v for k, v in rq.query_all() if k == "scope"]
        creds = None
        if rq.method == "POST":
            form = dict(_form(await rq.read(64 * 1024) or b""))
            if form.get("grant_type") == "password":
                creds = (form.get("username", ""), form.get("password", ""))
            elif form.get("grant_type"):
                raise RegistryHTTPError(400, "UNSUPPORTED",
                                        f"grant_type {form['grant_type'][:40]!r} not supported")
            scopes += form.get("scope", "").split()
        header = rq.headers.get("authorization")
        if creds is None and header:
            creds = parse_basic(header)
            if creds is None:
                raise RegistryHTTPError(401, "UNAUTHORIZED", "expected Basic credentials",
                                        None, {"www-authenticate": 'Basic realm="lamina"'})
        if creds is not None:
            assert self.htpasswd is not None
            if not await anyio.to_thread.run_sync(self.htpasswd.check, *creds):
                raise RegistryHTTPError(401, "UNAUTHORIZED", "wrong user name or password",
                                        None, {"www-authenticate": 'Basic realm="lamina"'})
            user = creds[0]
        access: list[dict[str, Any]] = []
        for text in scopes:
            parsed = parse_scope(text)
            if parsed is None or parsed[0] != "repository":
                continue
            try:
                repo = check_name(parsed[1])
            except RegistryHTTPError:
                continue
            wanted = parsed[2]
            allowed = self.policy.allowed(user, repo)
            granted = allowed if "*" in wanted else allowed & wanted
            access.append({"type": "repository", "name": repo, "actions": sorted(granted)})
        token = self.tokens.issue(user, access)
        body = json.dumps({"token": token, "access_token": token,
                           "expires_in": self.cfg.auth.token_ttl,
                           "issued_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())})
        return Reply(200, {"content-type": JSON}, body.encode())

    # -- dispatch ---------------------------------------------------------------------------
    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        kind = scope["type"]
        if kind == "http":
            await self.handle(scope, receive, send)
        elif kind == "lifespan":
            while True:
                message = await receive()
                if message["type"] == "lifespan.startup":
                    try:
                        await self.startup()
                    except Exception as e:  # noqa: BLE001
                        await send({"type": "lifespan.startup.failed", "message": str(e)})
                        return
                    await send({"type": "lifespan.startup.complete"})
                elif message["type"] == "lifespan.shutdown":
                    await self.shutdown()
                    await send({"type": "lifespan.shutdown.complete"})
                    return

    async def handle(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        method = scope["method"]
        rq = Rq(scope, receive, method)
        try:
            reply = await self._route(rq)
        except RegistryHTTPError as e:
            reply = Reply(e.status, {**e.headers, "content-type": JSON}, e.body())
        except MetadataUnavailable as e:    # the database is away: fail now, not later
            self.state.db.outage.down(str(e))
            reply = Reply(503, {"content-type": JSON, "retry-after": "1"},
                          RegistryHTTPError(503, "UNAVAILABLE", str(e)).body())
        except StorageUnavailable as e:     # the object store is away (it logged that)
            reply = Reply(503, {"content-type": JSON, "retry-after": "1"},
                          RegistryHTTPError(503, "UNAVAILABLE", str(e)).body())
        except StoreBusy as e:      # another process holds the store: come back soon
            reply = Reply(429, {"content-type": JSON, "retry-after": "1"},
                          RegistryHTTPError(429, "TOOMANYREQUESTS", str(e)).body())
        except LaminaError as e:
            log.warning("%s %s: %s", method, scope.get("path"), e)
            reply = Reply(500, {"content-type": JSON},
                          json.dumps({"errors": [{"code": "UNKNOWN",
                                                  "message": str(e)}]}).encode())
        except ConnectionAbortedError:
            return
        except Exception:
            log.exception("%s %s failed", method, scope.get("path"))
            reply = Reply(500, {"content-type": JSON},
                          b'{"errors":[{"code":"UNKNOWN","message":"internal error"}]}')
        else:
            if reply.status < 500:
                self.state.db.outage.up()
        await send_reply(reply, send, method == "HEAD")

    async def _route(self, rq: Rq) -> Reply:
        if self.limiter is not None:
            wait = self.limiter.take(rq.client)
            if wait > 0:
                raise RegistryHTTPError(429, "TOOMANYREQUESTS", "too many requests",
                                        {"retry_after": wait},
                                        {"retry-after": str(max(1, int(wait + 0.999)))})
        path: str = rq.scope["path"]
        if web.is_ui(path):          # the read-only pages: /ui/..., and / redirecting there
            return await web.handle(self, rq)
        if path in ("/v2/", "/v2"):
            if rq.method not in ("GET", "HEAD"):
                raise _unsupported(rq.method)
            await self._authorize(rq, None, "pull")
            return Reply(200, {"content-type": JSON}, b"{}")
        if path == "/v2/_catalog":
            if rq.method != "GET":
                raise _unsupported(rq.method)
            await self._authorize(rq, None, "pull")
            return await discovery.catalog(self, rq)
        if path == "/token":
            if rq.method not in ("GET", "POST"):
                raise _unsupported(rq.method)
            return await self.token(rq)
        for pattern, methods in _ROUTES:
            m = pattern.fullmatch(path)
            if m is None:
                continue
            entry = methods.get(rq.method)
            if entry is None:
                raise _unsupported(rq.method)
            handler, action = entry
            rq.name = m.group(1)
            rq.repo = check_name(rq.name)
            rq.arg = (m.group(2) or "") if pattern.groups >= 2 else ""
            await self._authorize(rq, rq.repo, action)
            return await handler(self, rq)
        raise RegistryHTTPError(404, "NAME_UNKNOWN" if path.startswith("/v2/")
                                else "UNSUPPORTED", f"no such endpoint {path[:200]}")


def _unsupported(method: str) -> RegistryHTTPError:
    return RegistryHTTPError(405, "UNSUPPORTED", f"method {method} is not allowed here")


def _form(body: bytes) -> list[tuple[str, str]]:
    from urllib.parse import parse_qsl

    return parse_qsl(body.decode("utf-8", "replace"), keep_blank_values=True)


def open_metadata(store: Store, cfg: ServerConfig) -> Db:
    """The metadata database ``cfg`` names: PostgreSQL, or the store's SQLite."""
    if cfg.metadata.url is None:
        from lamina.server.meta_sqlite import SqliteDb

        return SqliteDb(store)
    try:
        from lamina.server.meta_pg import PostgresDb
    except ImportError as e:   # an optional dependency: pip install 'lamina[postgres]'
        raise Unsupported(f"[metadata] url names PostgreSQL, which needs {e.name or 'psycopg'}"
                          ": pip install 'lamina[postgres]'") from None
    from lamina.store.gc import EXTERNAL_METADATA

    db = PostgresDb(cfg.metadata.url, cfg.metadata.pool_size, cfg.metadata.pool_wait)
    if store.meta.setting(EXTERNAL_METADATA) != db.where:
        store.meta.set_setting(EXTERNAL_METADATA, db.where)     # `lamina gc` keeps off
    return db


def create_app(store: Store, cfg: ServerConfig = ServerConfig(),
               own_store: bool = False) -> Registry:
    return Registry(store, cfg, own_store)
