"""HTTP to one registry: base URL, TLS, the auth dance, retries, error mapping.

Every request goes through ``RegistryClient.send``, which

- resolves ``/v2/...`` paths against the registry's base URL (``registry_base_url``),
  and takes absolute URLs (upload locations, redirects to storage) as they are;
- sends the Authorization header the ``Authenticator`` already knows for the request's
  scopes, and on a 401 does the dance once and retries;
- retries 408, 429, 500, 502, 503, 504 and dropped connections up to
  ``RegistryOptions.retries`` times, waiting ``backoff * 2**n`` (with jitter, capped) or
  what ``Retry-After`` asks (capped at a minute).  A request whose body is a stream
  cannot be replayed: it is sent once (the auth is settled before it starts);
- turns a refused connection, a TLS failure and error answers into one-line lamina
  errors naming the registry and the object (``what``).

Responses are always streamed: callers read bodies with a bound (manifests 4 MiB, error
bodies 8 KiB) or in chunks (blobs), and must close them.
"""

from __future__ import annotations

import email.utils
import random
import re
import socket
import ssl
import threading
import time
from collections.abc import Callable, Container, Iterator

from lamina.errors import LaminaError, TransportError
from lamina.transport.registry.auth import Authenticator, lookup_credentials
from lamina.transport.registry.errors import error_from_response
from lamina.transport.registry.options import RegistryOptions
from lamina.transport.registry.wire import (
    Body,
    Cancelled,
    ConnectError,
    FileBody,
    HttpClient,
    Response,
    WireError,
    with_params,
)

RETRY_STATUS = frozenset({408, 429, 500, 502, 503, 504})
MAX_RETRY_AFTER = 60.0


def _host(registry: str) -> str:
    """The host part of ``host[:port]`` / ``[v6]:port``."""
    if registry.startswith("["):
        return registry[1:registry.find("]")]
    return registry.rsplit(":", 1)[0] if registry.count(":") == 1 else registry


def is_loopback(registry: str) -> bool:
    host = _host(registry)
    if host == "localhost" or host.endswith(".localhost"):
        return True
    # 127.0.0.0/8 and ::1, in any spelling (the ipaddress module costs ~5 ms to import
    # for this one question)
    for family, loopback in ((socket.AF_INET, None), (socket.AF_INET6, bytes(15) + b"\1")):
        try:
            packed = socket.inet_pton(family, host)
        except (OSError, ValueError):
            continue
        return packed[0] == 127 if loopback is None else packed == loopback
    return False


def api_host(registry: str) -> str:
    """Docker Hub's API lives on registry-1.docker.io (what ``docker.io`` means)."""
    return "registry-1.docker.io" if registry in ("docker.io", "index.docker.io") else registry


def registry_base_url(registry: str, opts: RegistryOptions = RegistryOptions()) -> str:
    """``http://`` for loopback registries (as Docker treats them), unless a CA bundle
    says the registry speaks TLS or ``insecure`` asks to try TLS first; ``https://``
    everywhere else (verified unless ``insecure``, which then falls back to http when
    the TLS handshake fails, as Docker does for an insecure registry)."""
    host = api_host(registry)
    if is_loopback(registry) and opts.ca_bundle is None and not opts.insecure:
        return f"http://{host}"
    return f"https://{host}"


def make_http_client(opts: RegistryOptions) -> HttpClient:
    """The client a registry connection makes for itself: TLS as the options say and a
    pool big enough for ``jobs`` parallel blobs."""
    # Loading the system's CA store costs ~50 ms: for a plain-http registry (loopback)
    # with the default trust it is never needed, and the client makes the default
    # context itself on its first https connection.
    ctx: ssl.SSLContext | None = None
    if opts.ca_bundle is not None or opts.insecure:
        ctx = ssl.create_default_context(
            cafile=str(opts.ca_bundle) if opts.ca_bundle is not None else None)
        if opts.insecure:
            ctx.check_hostname = False
            ctx.verify_mode = ssl.CERT_NONE
    return HttpClient(ctx, timeout=opts.timeout, pool_size=max(10, 2 * opts.jobs))


def _cause_chain(e: BaseException) -> Iterator[BaseException]:
    seen: set[int] = set()
    cur: BaseException | None = e
    while cur is not None and id(cur) not in seen:
        seen.add(id(cur))
        yield cur
        cur = cur.__cause__ or cur.__context__


def _is_refused(e: BaseException) -> bool:
    return any(isinstance(x, ConnectionRefusedError) or "Connection refused" in str(x)
               for x in _cause_chain(e))


def _is_tls(e: BaseException) -> bool:
    return any(isinstance(x, ssl.SSLError) for x in _cause_chain(e))


def _reason(e: BaseException) -> str:
    text = str(e) or type(e).__name__
    for x in _cause_chain(e):
        if isinstance(x, ssl.SSLCertVerificationError):
            return x.verify_message or str(x)
    # "[Errno -2] Name or service not known" → "Name or service not known"
    return re.sub(r"^\[Errno -?\d+\] ", "", " ".join(text.split()))


def retry_after(resp: Response) -> float | None:
    """Seconds asked for by ``Retry-After`` (delta-seconds or an HTTP date)."""
    value = resp.headers.get("retry-after")
    if not value:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    return max(0.0, when.timestamp() - time.time())


class RegistryClient:
    """Requests to one registry, with auth, retries and error mapping.  Thread-safe:
    parallel blob copies share one client (and its connection pool)."""

    def __init__(self, registry: str, opts: RegistryOptions = RegistryOptions(),
                 client: HttpClient | None = None) -> None:
        self.registry = registry
        self.opts = opts
        self.base = registry_base_url(registry, opts)
        self._own = client is None
        self.http = client if client is not None else make_http_client(opts)
        creds = opts.credentials if opts.credentials is not None else lookup_credentials(
            registry)
        self.auth = Authenticator(registry, creds, self.http)
        self._lock = threading.Lock()
        self._cancel = threading.Event()
        # --insecure over https: whether the registry speaks TLS at all is decided once,
        # before the first request goes (see _settle_scheme).
        self._scheme_known = not (opts.insecure and self.base.startswith("https://"))
        self._sleep: Callable[[float], None] = self._wait

    # -- URLs --------------------------------------------------------------------------
    def url(self, path_or_url: str) -> str:
        return self.base + path_or_url if path_or_url.startswith("/") else path_or_url

    def _backoff(self, attempt: int, resp: Response | None = None) -> float:
        if resp is not None:
            asked = retry_after(resp)
            if asked is not None:
                return min(asked, MAX_RETRY_AFTER)
        step = min(self.opts.max_backoff, self.opts.backoff * (2.0 ** attempt))
        return step * random.uniform(0.5, 1.0)

    def pause(self, attempt: int, resp: Response | None = None) -> None:
        self._sleep(self._backoff(attempt, resp))

    def _wait(self, seconds: float) -> None:
        """A backoff that ``cancel`` cuts short."""
        if self._cancel.wait(seconds):
            raise Cancelled("cancelled")

    def cancel(self) -> None:
        """Stop, from another thread (Ctrl-C while blobs move): requests in flight and
        retries waiting end with ``Cancelled`` at once, and so does every later one."""
        self._cancel.set()
        self.http.cancel()

    # -- the one way requests go out ---------------------------------------------------
    def send(self, method: str, target: str, *, what: str,
             scopes: tuple[str, ...] = (), headers: dict[str, str] | None = None,
             content: Body = None, params: dict[str, str] | None = None,
             ok: Container[int] = (200,), follow_redirects: bool = False) -> Response:
        """Send a request, return the streamed response whose status is in ``ok``
        (close it), or raise the lamina error for what came back."""
        replayable = content is None or isinstance(content, bytes | FileBody)
        if not self._scheme_known:
            self._settle_scheme()
        attempt = 0
        auth_tries = 0
        while True:
            hdrs = dict(headers or {})
            sent = self.auth.header(scopes, what)
            if sent is not None:
                hdrs["Authorization"] = sent
            url = with_params(self.url(target), params)
            try:
                resp = self.http.request(method, url, headers=hdrs, body=content,
                                         follow_redirects=follow_redirects)
            except LaminaError:
                raise  # from a streamed body (IntegrityError) or the token service
            except WireError as e:
                if _is_refused(e):
                    raise TransportError(f"cannot connect to {self.registry}: connection "
                                         "refused") from None
                if _is_tls(e):
                    raise TransportError(
                        f"cannot connect to {self.registry}: TLS failed: {_reason(e)} "
                        "(use --insecure, or give the registry's CA certificate)") from None
                if isinstance(e, ConnectError):
                    raise TransportError(f"cannot connect to {self.registry}: "
                                         f"{_reason(e)}") from None
                if not replayable or attempt >= self.opts.retries:
                    raise TransportError(f"{self.registry}: {what}: {_reason(e)}") from None
                self.pause(attempt)
                attempt += 1
                continue
            if resp.status_code in ok:
                return resp
            if resp.status_code == 401 and auth_tries < 2 and replayable:
                auth_tries += 1
                try:
                    retry = self.auth.answer(resp, scopes, sent, what)
                except BaseException:
                    resp.close()
                    raise
                if retry is not None:
                    resp.close()
                    continue
            if resp.status_code in RETRY_STATUS and replayable and attempt < self.opts.retries:
                wait = self._backoff(attempt, resp)
                resp.close()
                self._sleep(wait)
                attempt += 1
                continue
            try:
                raise error_from_response(resp, self.registry, what,
                                          authenticated=self.auth.authenticated)
            finally:
                resp.close()

    def _settle_scheme(self) -> None:
        """--insecure: a registry that does not speak TLS is spoken to over http (Docker
        tries an insecure registry's https endpoint, then its http one; ggcr's
        ``transport.ping`` pings both schemes).  Asked once with ``GET /v2/`` (the
        spec's version check) under the lock, so that parallel blob requests all start
        on the scheme it found: deciding it per request raced — the first request to
        fail switched to http, and the others, already failed over TLS, reported it."""
        with self._lock:
            if self._scheme_known:
                return
            try:
                self.http.request("GET", self.base + "/v2/").close()
            except WireError as e:
                if _is_tls(e):
                    self.base = "http://" + self.base.removeprefix("https://")
                # anything else (refused, timed out): the request itself says so
            self._scheme_known = True

    def close(self) -> None:
        if self._own:
            self.http.close()


def header_digest(resp: Response) -> str | None:
    value = resp.headers.get("docker-content-digest")
    return value.strip() if value else None


def resolve_location(resp: Response, what: str, registry: str) -> str:
    """An upload ``Location`` may be absolute or relative to the request (spec 1.1)."""
    loc = resp.headers.get("location")
    if not loc:
        raise TransportError(f"{registry}: {what}: the registry gave no upload location")
    return resp.join(loc)
