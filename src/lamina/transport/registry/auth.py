"""Credentials, and the registry auth dance (distribution "Token Authentication
Specification"; RFC 6750 for the challenge syntax).

The dance: a request answered ``401`` with ``WWW-Authenticate: Bearer realm="…",
service="…",scope="…"`` is retried with a token fetched from ``realm?service=&scope=``
(with basic credentials when we have some; with ``grant_type=refresh_token`` as a form
POST when we hold an identity token).  Tokens are cached per scope set and sent up front
on later requests, so a pull of many blobs costs one token, not one 401 per blob.  A
``Basic`` challenge is answered with the credentials, and from then on they are sent
up front too.

Where credentials come from, in order: the explicit ``RegistryOptions.credentials``;
lamina's own file (``$LAMINA_AUTH``, default ``~/.config/lamina/auth.json``, mode 0600);
Docker's ``$DOCKER_CONFIG/config.json`` (default ``~/.docker/config.json``).  Both files
have Docker's shape ``{"auths": {"host:port": {"auth": base64("user:pass")}}}``; Docker
Hub is keyed ``https://index.docker.io/v1/``, as Docker writes it.  Credential helpers
(``credsStore``/``credHelpers``) are not consulted.
"""

from __future__ import annotations

import base64
import contextlib
import json
import os
import re
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from lamina.errors import InvalidInput, InvalidManifest
from lamina.image.jsondoc import load_object
from lamina.transport.registry.errors import RegistryError, error_from_response, read_limited
from lamina.transport.registry.options import Credentials
from lamina.transport.registry.wire import HttpClient, Response, WireError, with_params

DOCKER_HUB_KEY = "https://index.docker.io/v1/"
_DOCKER_HUB_NAMES = {"docker.io", "index.docker.io", "registry-1.docker.io"}
MAX_TOKEN_BODY = 1 << 20


# -- the credentials files --------------------------------------------------------------
def lamina_auth_path() -> Path:
    env = os.environ.get("LAMINA_AUTH")
    if env:
        return Path(env)
    config = os.environ.get("XDG_CONFIG_HOME") or os.path.join(os.path.expanduser("~"),
                                                               ".config")
    return Path(config) / "lamina" / "auth.json"


def docker_config_path() -> Path:
    env = os.environ.get("DOCKER_CONFIG")
    base = Path(env) if env else Path(os.path.expanduser("~")) / ".docker"
    return base / "config.json"


def auth_key(registry: str) -> str:
    """The ``auths`` key Docker writes for a registry."""
    return DOCKER_HUB_KEY if registry in _DOCKER_HUB_NAMES else registry


def _normalise_key(key: str) -> str:
    """``https://host:5000/v1/`` → ``host:5000``; Docker Hub's names → ``docker.io``."""
    host = re.sub(r"^[a-z]+://", "", key).split("/", 1)[0]
    return "docker.io" if host in _DOCKER_HUB_NAMES else host


def _read_auths(path: Path) -> dict[str, Any]:
    auths = _load_file(path).get("auths")
    return auths if isinstance(auths, dict) else {}


def _entry_credentials(entry: Any, path: Path, key: str) -> Credentials | None:
    if not isinstance(entry, dict):
        return None
    identity = entry.get("identitytoken")
    user = entry.get("username")
    password = entry.get("password")
    encoded = entry.get("auth")
    if isinstance(encoded, str) and encoded:
        try:
            user, _, password = base64.b64decode(encoded).decode().partition(":")
        except (ValueError, UnicodeDecodeError):
            raise InvalidInput(f"{path}: the auth entry for {key} is not base64 of "
                               "user:password") from None
    if isinstance(identity, str) and identity:
        return Credentials(user if isinstance(user, str) else "", "", identity)
    if isinstance(user, str) and isinstance(password, str) and (user or password):
        return Credentials(user, password)
    return None


def _lookup_in(path: Path, registry: str) -> Credentials | None:
    auths = _read_auths(path)
    want = _normalise_key(registry)
    if registry in auths:  # the exact key first, then any spelling of the same host
        found = _entry_credentials(auths[registry], path, registry)
        if found:
            return found
    for key, entry in auths.items():
        if isinstance(key, str) and _normalise_key(key) == want:
            found = _entry_credentials(entry, path, key)
            if found:
                return found
    return None


def lookup_credentials(registry: str) -> Credentials | None:
    """Stored credentials for ``registry`` (host[:port]): lamina's file, then Docker's."""
    for path in (lamina_auth_path(), docker_config_path()):
        found = _lookup_in(path, registry)
        if found is not None:
            return found
    return None


def _write_private_json(path: Path, obj: Any) -> None:
    """Write ``path`` atomically with mode 0600 (its directory 0700 when created)."""
    path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        with os.fdopen(fd, "w") as f:
            json.dump(obj, f, indent="\t")
            f.write("\n")
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, 0o600)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()
        raise


def _load_file(path: Path) -> dict[str, Any]:
    try:
        obj = json.loads(path.read_text())
    except FileNotFoundError:
        return {}
    except (OSError, ValueError) as e:
        raise InvalidInput(f"cannot read credentials file {path}: {e}") from None
    return obj if isinstance(obj, dict) else {}


def store_credentials(registry: str, creds: Credentials) -> Path:
    """Record credentials for ``registry`` in lamina's file; returns its path."""
    path = lamina_auth_path()
    obj = _load_file(path)
    auths = obj.get("auths")
    if not isinstance(auths, dict):
        auths = {}
    entry: dict[str, str] = {}
    if creds.identity_token:
        entry["identitytoken"] = creds.identity_token
        if creds.username:
            entry["auth"] = base64.b64encode(f"{creds.username}:".encode()).decode()
    else:
        entry["auth"] = base64.b64encode(f"{creds.username}:{creds.password}".encode()).decode()
    want = _normalise_key(registry)
    for key in [k for k in auths if _normalise_key(k) == want]:
        del auths[key]
    auths[auth_key(registry)] = entry
    obj["auths"] = auths
    _write_private_json(path, obj)
    return path


def remove_credentials(registry: str) -> bool:
    """Forget lamina's credentials for ``registry``; False when there were none."""
    path = lamina_auth_path()
    obj = _load_file(path)
    auths = obj.get("auths")
    if not isinstance(auths, dict):
        return False
    want = _normalise_key(registry)
    keys = [k for k in auths if _normalise_key(k) == want]
    if not keys:
        return False
    for key in keys:
        del auths[key]
    _write_private_json(path, obj)
    return True


# -- challenges ---------------------------------------------------------------------------
@dataclass(frozen=True)
class Challenge:
    scheme: str                 # lower case: "bearer", "basic"
    params: dict[str, str]


_PARAM = re.compile(r'\s*([A-Za-z0-9_.-]+)\s*=\s*("((?:[^"\\]|\\.)*)"|[^,\s]*)\s*,?')


def parse_www_authenticate(header: str) -> list[Challenge]:
    """RFC 7235 challenges: ``Bearer realm="x",service="y", Basic realm="z"``."""
    out: list[Challenge] = []
    pos = 0
    text = header.strip()
    while pos < len(text):
        m = re.compile(r"\s*,?\s*([A-Za-z][A-Za-z0-9!#$%&'*+.^_`|~-]*)").match(text, pos)
        if not m:
            break
        scheme = m.group(1).lower()
        pos = m.end()
        params: dict[str, str] = {}
        while pos < len(text):
            p = _PARAM.match(text, pos)
            if not p or not p.group(0).strip():
                break
            value = p.group(3) if p.group(3) is not None else p.group(2)
            params[p.group(1).lower()] = re.sub(r"\\(.)", r"\1", value)
            pos = p.end()
        out.append(Challenge(scheme, params))
    return out


def basic_header(creds: Credentials) -> str:
    raw = f"{creds.username}:{creds.password}".encode()
    return "Basic " + base64.b64encode(raw).decode()


@dataclass
class _Token:
    value: str
    expires: float


class Authenticator:
    """The auth state of one client for one registry: which scheme it wants, and the
    bearer tokens fetched so far, keyed by scope set.  Thread-safe (parallel blobs)."""

    def __init__(self, registry: str, credentials: Credentials | None,
                 http: HttpClient) -> None:
        self.registry = registry
        self.credentials = credentials
        self._http = http
        self._lock = threading.Lock()
        self._fetching = threading.Lock()    # one token request at a time
        self._scheme: str | None = None      # "basic" / "bearer" once a challenge was seen
        self._bearer: Challenge | None = None
        self._tokens: dict[tuple[str, ...], _Token] = {}
        self.token_requests = 0              # how many times the token service was asked

    @property
    def authenticated(self) -> bool:
        return self.credentials is not None

    def _cached(self, scopes: tuple[str, ...]) -> str | None:
        with self._lock:
            tok = self._tokens.get(scopes)
            if tok is not None and tok.expires > time.monotonic():
                return f"Bearer {tok.value}"
        return None

    def header(self, scopes: tuple[str, ...], what: str) -> str | None:
        """The Authorization header to send up front for a request needing ``scopes``."""
        if self._scheme == "basic" and self.credentials is not None:
            return basic_header(self.credentials)
        if self._scheme != "bearer" or self._bearer is None:
            return None
        cached = self._cached(scopes)
        if cached is not None:
            return cached
        # We know the realm: fetch the token for these scopes before sending, rather than
        # collecting a 401 for every new scope (and a streamed body cannot be sent twice).
        with self._fetching:
            return self._cached(scopes) or f"Bearer {self._fetch_token(self._bearer, scopes, what)}"

    def answer(self, resp: Response, scopes: tuple[str, ...], sent: str | None,
               what: str) -> str | None:
        """Given a 401, the Authorization header to retry with, or None if there is
        no point retrying (then the 401 is the answer)."""
        challenges = parse_www_authenticate(resp.headers.get("www-authenticate", ""))
        bearer = next((c for c in challenges if c.scheme == "bearer"), None)
        basic = next((c for c in challenges if c.scheme == "basic"), None)
        if bearer is not None and "realm" in bearer.params:
            with self._fetching:   # parallel blobs: one thread fetches, the others reuse
                with self._lock:
                    self._scheme, self._bearer = "bearer", bearer
                cached = self._cached(scopes)
                if cached is not None and cached != sent:
                    return cached  # another thread got it meanwhile
                extra = [s for s in _split_scope(bearer.params.get("scope"))
                         if not any(_covers(mine, s) for mine in scopes)]
                want = tuple(dict.fromkeys([*scopes, *extra]))
                token = self._fetch_token(bearer, want, what)
                if want != scopes:
                    with self._lock:
                        self._tokens[scopes] = self._tokens[want]
            return f"Bearer {token}"
        if basic is not None and self.credentials is not None:
            with self._lock:
                self._scheme = "basic"
            header = basic_header(self.credentials)
            return None if sent == header else header
        return None

    def _fetch_token(self, challenge: Challenge, scopes: tuple[str, ...], what: str) -> str:
        realm = challenge.params["realm"]
        params: list[tuple[str, str]] = []
        if challenge.params.get("service"):
            params.append(("service", challenge.params["service"]))
        params.extend(("scope", s) for s in scopes)
        creds = self.credentials
        try:
            if creds is not None and creds.identity_token:
                # OAuth2 refresh-token grant (what Docker does with an identity token)
                from urllib.parse import urlencode

                form = {k: v for k, v in params if k == "service"}
                body = urlencode({**form, "scope": " ".join(scopes),
                                  "grant_type": "refresh_token",
                                  "refresh_token": creds.identity_token,
                                  "client_id": "lamina"}).encode()
                resp = self._http.request("POST", realm, body=body, headers={
                    "Content-Type": "application/x-www-form-urlencoded"})
            else:
                headers = {"Authorization": basic_header(creds)} if creds is not None else {}
                resp = self._http.request("GET", with_params(realm, params), headers=headers)
            try:
                self.token_requests += 1
                if resp.status_code != 200:
                    raise error_from_response(resp, self.registry, what,
                                              authenticated=creds is not None)
                body = read_limited(resp, MAX_TOKEN_BODY)
            finally:
                resp.close()
        except WireError as e:
            raise RegistryError(f"{self.registry}: cannot get a token from {realm}: {e}",
                                registry=self.registry) from None
        try:
            obj = load_object(body, "token answer")
            token = obj.get("token") or obj.get("access_token")
        except InvalidManifest:
            obj, token = {}, None
        if not isinstance(token, str) or not token:
            raise RegistryError(f"{self.registry}: the token service {realm} answered "
                                "without a token", registry=self.registry)
        expires_in = obj.get("expires_in")
        # Token spec: default lifetime 60 s; renew 10 s early so no request carries a
        # token that dies in flight.
        life = float(expires_in) if isinstance(expires_in, int | float) and expires_in > 0 \
            else 60.0
        with self._lock:
            self._tokens[scopes] = _Token(token, time.monotonic() + max(life - 10.0, 1.0))
        return token


def _split_scope(scope: str | None) -> list[str]:
    return scope.split() if scope else []


def _covers(mine: str, theirs: str) -> bool:
    """``repository:a:pull,push`` covers ``repository:a:pull``: asking for both would
    only make the token service work harder (and some refuse duplicates)."""
    m_type, _, rest = mine.partition(":")
    m_name, _, m_actions = rest.rpartition(":")
    t_type, _, rest = theirs.partition(":")
    t_name, _, t_actions = rest.rpartition(":")
    return (m_type, m_name) == (t_type, t_name) and set(t_actions.split(",")) <= set(
        m_actions.split(","))
