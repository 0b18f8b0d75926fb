"""Who is asking, and may they (distribution "Token Authentication Specification").

Three parts, each small:

* ``Htpasswd`` — ``user:bcrypt-hash`` lines (``htpasswd -B``), as docker-registry reads
  them.  bcrypt is slow on purpose (~50–250 ms a check), so a successful check is
  remembered for a minute under a keyed hash of the credentials: a client that sends
  Basic credentials on every request pays for one bcrypt, not one per blob.
* ``Tokens`` — the built-in token service's bearer tokens: compact JWS, HS256 (HMAC-SHA256
  over ``header.payload``) with Docker's claims (``iss``, ``sub``, ``aud``, ``exp``,
  ``nbf``, ``iat``, ``jti``, ``access: [{type, name, actions}]``).  One server both issues
  and checks them, so a shared-secret MAC is all the signature needed; the secret is
  random per start unless the config names one.
* ``Policy`` — the access rules: which actions (pull, push, delete) a user, or an
  anonymous client, has on a repository.

The app asks ``Policy.allowed(user, repo)``; a bearer token carries the grants the
token service computed with the same policy, intersected with the scopes requested.
"""

from __future__ import annotations

import base64
import binascii
import fnmatch
import hashlib
import hmac
import json
import re
import secrets
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import bcrypt

from lamina.errors import InvalidInput
from lamina.server.config import ACTIONS, AuthConfig

ANONYMOUS = ""          # the user name of a client that sent no credentials
_CACHE_TTL = 60.0


class Htpasswd:
    def __init__(self, path: Path) -> None:
        self.path = path
        self._users: dict[str, bytes] = {}
        self._ok: dict[bytes, tuple[str, float]] = {}
        self._key = secrets.token_bytes(32)
        self._lock = threading.Lock()
        try:
            text = path.read_text()
        except OSError as e:
            raise InvalidInput(f"cannot read htpasswd file {path}: {e.strerror or e}") from None
        for n, line in enumerate(text.splitlines(), 1):
            line = line.strip()
            if not line or line.startswith("#"):
                continue
            user, sep, hashed = line.partition(":")
            if not sep or not user:
                raise InvalidInput(f"{path}:{n}: expected USER:HASH")
            if not hashed.startswith(("$2y$", "$2a$", "$2b$")):
                raise InvalidInput(f"{path}:{n}: only bcrypt entries are supported "
                                   "(htpasswd -B)")
            self._users[user] = hashed.encode()

    def check(self, user: str, password: str) -> bool:
        """Blocking (bcrypt): call from a worker thread."""
        hashed = self._users.get(user)
        if hashed is None:
            return False
        key = hmac.new(self._key, f"{user}\0{password}".encode(), hashlib.sha256).digest()
        now = time.monotonic()
        with self._lock:
            hit = self._ok.get(key)
            if hit is not None and hit[0] == user and hit[1] > now:
                return True
        try:
            ok = bcrypt.checkpw(password.encode(), hashed)
        except ValueError:
            return False
        if ok:
            with self._lock:
                if len(self._ok) > 10000:
                    self._ok.clear()
                self._ok[key] = (user, now + _CACHE_TTL)
        return ok

    def cached(self, user: str, password: str) -> bool:
        """A check that never runs bcrypt: True only if remembered (for the event loop)."""
        key = hmac.new(self._key, f"{user}\0{password}".encode(), hashlib.sha256).digest()
        with self._lock:
            hit = self._ok.get(key)
        return hit is not None and hit[0] == user and hit[1] > time.monotonic()


def parse_basic(header: str) -> tuple[str, str] | None:
    scheme, _, value = header.partition(" ")
    if scheme.lower() != "basic":
        return None
    try:
        user, sep, password = base64.b64decode(value.strip(), validate=True).decode(
        ).partition(":")
    except (binascii.Error, UnicodeDecodeError, ValueError):
        return None
    return (user, password) if sep else None


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


# scope grammar (token spec): resourcetype[(resourceclass)]:resourcename:action[,action]
_SCOPE = re.compile(r"([a-z0-9]+)(?:\([a-z0-9]+\))?:(.+):([a-z*]+(?:,[a-z*]+)*)")


def parse_scope(text: str) -> tuple[str, str, set[str]] | None:
    m = _SCOPE.fullmatch(text)
    if not m:
        return None
    return m.group(1), m.group(2), set(m.group(3).split(","))


@dataclass(frozen=True)
class Grant:
    """What a bearer token lets its holder do: ``user`` and repository → actions."""

    user: str
    access: dict[str, frozenset[str]]


class Tokens:
    def __init__(self, service: str, ttl: int, secret: str | None) -> None:
        self.service = service
        self.ttl = ttl
        self._key = secret.encode() if secret else secrets.token_bytes(32)
        self._header = _b64(json.dumps({"alg": "HS256", "typ": "JWT"},
                                       separators=(",", ":")).encode())

    def issue(self, user: str, access: list[dict[str, Any]], now: float | None = None
              ) -> str:
        now = time.time() if now is None else now
        claims = {"iss": "lamina", "sub": user, "aud": self.service, "iat": int(now),
                  "nbf": int(now) - 10, "exp": int(now) + self.ttl,
                  "jti": secrets.token_hex(8), "access": access}
        signing = f"{self._header}.{_b64(json.dumps(claims, separators=(',', ':')).encode())}"
        sig = hmac.new(self._key, signing.encode(), hashlib.sha256).digest()
        return f"{signing}.{_b64(sig)}"

    def verify(self, token: str, now: float | None = None) -> Grant | None:
        """The grant a valid, unexpired token of ours carries; None for anything else."""
        parts = token.split(".")
        if len(parts) != 3 or parts[0] != self._header:
            return None
        want = hmac.new(self._key, f"{parts[0]}.{parts[1]}".encode(), hashlib.sha256).digest()
        try:
            if not hmac.compare_digest(want, _unb64(parts[2])):
                return None
            claims = json.loads(_unb64(parts[1]))
        except (binascii.Error, ValueError):
            return None
        now = time.time() if now is None else now
        if not isinstance(claims, dict) or claims.get("aud") != self.service:
            return None
        exp, nbf = claims.get("exp"), claims.get("nbf")
        if not isinstance(exp, int) or not isinstance(nbf, int) or not nbf <= now < exp:
            return None
        access: dict[str, frozenset[str]] = {}
        for entry in claims.get("access") or []:
            if (isinstance(entry, dict) and entry.get("type") == "repository"
                    and isinstance(entry.get("name"), str)
                    and isinstance(entry.get("actions"), list)):
                access[entry["name"]] = access.get(entry["name"], frozenset()) | frozenset(
                    a for a in entry["actions"] if isinstance(a, str))
        return Grant(str(claims.get("sub", "")), access)


class Policy:
    """``allowed(user, repo)`` → the actions ``user`` (ANONYMOUS for none) has there."""

    def __init__(self, cfg: AuthConfig) -> None:
        self.cfg = cfg
        self._cache: dict[tuple[str, str], frozenset[str]] = {}

    def _member(self, user: str, who: str) -> bool:
        if who == "anonymous":
            return user == ANONYMOUS
        if user == ANONYMOUS:
            return False
        if who == "*":
            return True
        if who.startswith("@"):
            return user in self.cfg.groups.get(who[1:], ())
        return who == user

    def allowed(self, user: str, repo: str) -> frozenset[str]:
        if not self.cfg.enabled:
            return frozenset(ACTIONS)
        key = (user, repo)
        hit = self._cache.get(key)
        if hit is not None:
            return hit
        actions: set[str] = set()
        if user == ANONYMOUS and self.cfg.anonymous_pull:
            actions.add("pull")
        if not self.cfg.rules and user != ANONYMOUS:
            actions.update(ACTIONS)
        for rule in self.cfg.rules:
            if any(self._member(user, w) for w in rule.who) and any(
                    fnmatch.fnmatchcase(repo, p) for p in rule.repositories):
                actions |= rule.actions
        result = frozenset(actions)
        if len(self._cache) > 10000:
            self._cache.clear()
        self._cache[key] = result
        return result
