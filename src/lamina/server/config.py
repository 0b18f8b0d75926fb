"""What ``lamina serve`` is told: one ``ServerConfig``, from flags and a TOML file.

The file (``--config FILE``) is small; every key is optional::

    [server]
    addr = "127.0.0.1:5000"
    tls_cert = "cert.pem"             # with tls_key: serve https
    tls_key = "key.pem"
    header_timeout = 30               # seconds to send a request's line and headers
                                      #   (whole head, as nginx client_header_timeout)
    body_timeout = 60                 # seconds a request body (or a response being
                                      #   read) may move nothing: between reads, as
                                      #   nginx client_body_timeout and send_timeout
    idle_timeout = 75                 # keep-alive: whole seconds between requests
    max_connections = 1024            # open connections; beyond it idle ones are
                                      #   closed to make room, else the new one gets 503

    [auth]
    htpasswd = "htpasswd"             # bcrypt entries (htpasswd -B); turns auth on
    token = true                      # built-in token service at /token (Docker-style
                                      #   401 → token → retry); false: Basic challenges
    service = "lamina"                # the token audience
    realm = "https://host:5000/token" # default: derived from each request's Host
    token_ttl = 300
    token_secret = "…"                # HMAC key; default: random per server start
    anonymous_pull = false

    [groups]
    devs = ["alice", "bob"]

    [[access]]                        # who may do what where (union of matching rules)
    who = ["@devs", "carol"]          # user names, @group, "*" (any user), "anonymous"
    repositories = ["demo/*"]         # fnmatch patterns ('*' crosses '/')
    actions = ["pull", "push"]        # pull, push, delete, or "*"

    [limits]
    max_manifest_bytes = 4194304      # 413 SIZE_INVALID above (spec: accept ≥ 4 MiB)
    max_blob_bytes = 0                # 0: no limit
    rate = 0                          # requests/second per client address, 0: off
    burst = 0                         # bucket size (default: 2 × rate)
    upload_ttl = 3600                 # idle upload sessions expire after this
    chunk_min_length = 1048576        # advertised as OCI-Chunk-Min-Length (not enforced;
                                      #   0: not advertised)

    [storage]                         # where blob bytes live (server/storage/)
    driver = "local"                  # "local": the store's blobs/; "s3": a bucket
    endpoint = "http://127.0.0.1:7480"  # s3: default $AWS_ENDPOINT_URL (else AWS's own)
    region = "us-east-1"              # default $AWS_REGION, $AWS_DEFAULT_REGION
    bucket = "registry"               # created on start when missing
    access_key = "…"                  # default $AWS_ACCESS_KEY_ID
    secret_key = "…"                  # default $AWS_SECRET_ACCESS_KEY
    prefix = ""                       # key prefix inside the bucket (rootdirectory)
    redirect = false                  # blob GETs: 307 to a presigned URL on the store
    redirect_ttl = 1200               # seconds a presigned URL stays valid
    part_size = 8388608               # multipart part size (≥ 5 MiB, S3's minimum)

    [metadata]                        # default: the store's own SQLite database
    url = "postgresql://lamina@db:5432/registry"  # shared by every replica (meta_pg.py);
                                      #   libpq's PGPASSWORD, ~/.pgpass work too
    pool_size = 16                    # connections per replica
    pool_wait = 3                     # seconds a request waits for a connection, then 503
    gc_interval = 0                   # seconds between online gc runs (0: only
                                      #   `lamina serve gc`); replicas take turns
    lease_ttl = 7200                  # seconds a blob uploaded (or HEADed, mounted)
                                      #   stays safe from gc before a manifest names it

Without ``htpasswd`` there is no authentication: anyone may pull, push and delete, as
with a default docker-registry.  With it and no ``[[access]]`` rules, every user may do
everything; anonymous clients may pull only if ``anonymous_pull``.
"""

from __future__ import annotations

import math
import os
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from typing import Any

from lamina.errors import InvalidInput

ACTIONS = ("pull", "push", "delete")


@dataclass(frozen=True)
class AccessRule:
    who: tuple[str, ...]
    repositories: tuple[str, ...]
    actions: frozenset[str]


@dataclass(frozen=True)
class AuthConfig:
    htpasswd: Path | None = None
    token: bool = True
    service: str = "lamina"
    realm: str | None = None
    token_ttl: int = 300
    token_secret: str | None = None
    anonymous_pull: bool = False
    groups: dict[str, tuple[str, ...]] = field(default_factory=dict)
    rules: tuple[AccessRule, ...] = ()

    @property
    def enabled(self) -> bool:
        return self.htpasswd is not None


@dataclass(frozen=True)
class Limits:
    max_manifest_bytes: int = 4 * 1024 * 1024
    max_blob_bytes: int = 0
    rate: float = 0.0
    burst: float = 0.0
    upload_ttl: float = 3600.0
    chunk_min_length: int = 1024 * 1024


@dataclass(frozen=True)
class Connections:
    """How long a client may take, and how many may be connected (server/connections.py).
    Every limit is finite: a connection that sends nothing is closed in the end."""

    header_timeout: float = 30.0
    body_timeout: float = 60.0
    idle_timeout: int = 75            # whole seconds: uvicorn's timeout_keep_alive
    max_connections: int = 1024

    def __post_init__(self) -> None:
        for key in ("header_timeout", "body_timeout", "idle_timeout", "max_connections"):
            if not 0 < getattr(self, key) < math.inf:      # TOML has inf and nan
                raise InvalidInput(f"{key} must be a number greater than 0")


@dataclass(frozen=True)
class MetadataConfig:
    """Where the registry keeps its metadata: None — the store's SQLite database."""

    url: str | None = None
    pool_size: int = 16
    pool_wait: float = 3.0
    gc_interval: float = 0.0
    lease_ttl: float = 7200.0

    def __post_init__(self) -> None:
        if self.url is not None and not self.url.startswith(("postgresql://", "postgres://")):
            raise InvalidInput("metadata url must be postgresql://… (or left out for the "
                               "store's SQLite database)")
        if not 0 < self.pool_size < 1000:
            raise InvalidInput("pool_size must be between 1 and 999")
        if not 0 < self.pool_wait < math.inf:
            raise InvalidInput("pool_wait must be a number of seconds greater than 0")
        if not 0 <= self.gc_interval < math.inf:
            raise InvalidInput("gc_interval must be 0 or more seconds")
        if not 0 < self.lease_ttl < math.inf:
            raise InvalidInput("lease_ttl must be a number of seconds greater than 0")


@dataclass(frozen=True)
class StorageConfig:
    driver: str = "local"
    endpoint: str | None = None
    region: str = "us-east-1"
    bucket: str = "registry"
    access_key: str | None = None
    secret_key: str | None = None
    prefix: str = ""
    redirect: bool = False
    redirect_ttl: int = 1200
    part_size: int = 8 * 1024 * 1024
    connect_timeout: float = 3.0
    read_timeout: float = 60.0


@dataclass(frozen=True)
class ServerConfig:
    host: str = "127.0.0.1"
    port: int = 5000
    tls_cert: Path | None = None
    tls_key: Path | None = None
    auth: AuthConfig = AuthConfig()
    limits: Limits = Limits()
    connections: Connections = Connections()
    storage: StorageConfig = StorageConfig()
    metadata: MetadataConfig = MetadataConfig()


def parse_addr(text: str) -> tuple[str, int]:
    """``HOST:PORT``, ``:PORT`` or ``[v6]:PORT``."""
    host, sep, port = text.rpartition(":")
    if not sep or not port.isdigit() or not 0 <= int(port) <= 65535:
        raise InvalidInput(f"invalid address {text!r}: expected HOST:PORT")
    host = host.strip("[]") or "0.0.0.0"
    return host, int(port)


def _get(table: dict[str, Any], key: str, kind: type | tuple[type, ...], where: str,
         default: Any) -> Any:
    value = table.get(key, default)
    if value is default:
        return value
    if isinstance(value, bool) and kind is not bool and bool not in (
            kind if isinstance(kind, tuple) else (kind,)):
        raise InvalidInput(f"{where}: {key} must be {getattr(kind, '__name__', kind)}")
    if not isinstance(value, kind):
        raise InvalidInput(f"{where}: {key} has the wrong type")
    return value


def _strings(value: Any, what: str) -> tuple[str, ...]:
    if isinstance(value, str):
        value = [value]
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise InvalidInput(f"{what} must be a list of strings")
    return tuple(value)


def load_config(path: Path | None, base: ServerConfig = ServerConfig()) -> ServerConfig:
    """Read ``path`` (TOML) over ``base``; relative file names are relative to the file."""
    if path is None:
        return base
    try:
        doc = tomllib.loads(path.read_text())
    except OSError as e:
        raise InvalidInput(f"cannot read config {path}: {e.strerror or e}") from None
    except tomllib.TOMLDecodeError as e:
        raise InvalidInput(f"config {path} is not valid TOML: {e}") from None
    where = str(path)
    unknown = set(doc) - {"server", "auth", "groups", "access", "limits", "storage",
                         "metadata"}
    if unknown:
        raise InvalidInput(f"{where}: unknown section(s) {', '.join(sorted(unknown))}")

    def rel(value: str | None) -> Path | None:
        if value is None:
            return None
        p = Path(value).expanduser()
        return p if p.is_absolute() else path.parent / p

    server = doc.get("server", {})
    host, port = base.host, base.port
    if "addr" in server:
        host, port = parse_addr(_get(server, "addr", str, where, None))
    tls_cert = rel(_get(server, "tls_cert", str, where, None)) or base.tls_cert
    tls_key = rel(_get(server, "tls_key", str, where, None)) or base.tls_key
    num = (int, float)
    conn = base.connections
    header_timeout = float(_get(server, "header_timeout", num, where, conn.header_timeout))
    body_timeout = float(_get(server, "body_timeout", num, where, conn.body_timeout))
    idle_timeout = _get(server, "idle_timeout", int, where, conn.idle_timeout)
    max_connections = _get(server, "max_connections", int, where, conn.max_connections)
    try:
        connections = Connections(header_timeout, body_timeout, idle_timeout, max_connections)
    except InvalidInput as e:       # a value out of range: say which file
        raise InvalidInput(f"{where}: {e}") from None

    auth = doc.get("auth", {})
    groups = {str(k): _strings(v, f"{where}: group {k}") for k, v in
              doc.get("groups", {}).items()}
    rules = []
    for i, rule in enumerate(doc.get("access", [])):
        what = f"{where}: access rule {i + 1}"
        if not isinstance(rule, dict):
            raise InvalidInput(f"{what} must be a table")
        actions = set(_strings(rule.get("actions", ["pull"]), f"{what} actions"))
        if "*" in actions:
            actions = set(ACTIONS)
        bad = actions - set(ACTIONS)
        if bad:
            raise InvalidInput(f"{what}: unknown action(s) {', '.join(sorted(bad))}")
        rules.append(AccessRule(_strings(rule.get("who", []), f"{what} who"),
                                _strings(rule.get("repositories", ["*"]),
                                         f"{what} repositories"),
                                frozenset(actions)))
    auth_cfg = AuthConfig(
        htpasswd=rel(_get(auth, "htpasswd", str, where, None)) or base.auth.htpasswd,
        token=_get(auth, "token", bool, where, base.auth.token),
        service=_get(auth, "service", str, where, base.auth.service),
        realm=_get(auth, "realm", str, where, base.auth.realm),
        token_ttl=_get(auth, "token_ttl", int, where, base.auth.token_ttl),
        token_secret=_get(auth, "token_secret", str, where, base.auth.token_secret),
        anonymous_pull=_get(auth, "anonymous_pull", bool, where, base.auth.anonymous_pull),
        groups=groups or base.auth.groups,
        rules=tuple(rules) or base.auth.rules,
    )
    lim = doc.get("limits", {})
    limits = Limits(
        max_manifest_bytes=_get(lim, "max_manifest_bytes", int, where,
                                base.limits.max_manifest_bytes),
        max_blob_bytes=_get(lim, "max_blob_bytes", int, where, base.limits.max_blob_bytes),
        rate=float(_get(lim, "rate", num, where, base.limits.rate)),
        burst=float(_get(lim, "burst", num, where, base.limits.burst)),
        upload_ttl=float(_get(lim, "upload_ttl", num, where, base.limits.upload_ttl)),
        chunk_min_length=_get(lim, "chunk_min_length", int, where,
                              base.limits.chunk_min_length),
    )
    storage = _storage(doc.get("storage", {}), where, base.storage)
    return ServerConfig(host, port, tls_cert, tls_key, auth_cfg, limits, connections, storage,
                        _metadata(doc.get("metadata", {}), where, base.metadata))


def _metadata(md: dict[str, Any], where: str, base: MetadataConfig) -> MetadataConfig:
    """``[metadata]``: the database (server/metadata.py)."""
    num = (int, float)
    try:
        return MetadataConfig(
            url=_get(md, "url", str, where, base.url),
            pool_size=_get(md, "pool_size", int, where, base.pool_size),
            pool_wait=float(_get(md, "pool_wait", num, where, base.pool_wait)),
            gc_interval=float(_get(md, "gc_interval", num, where, base.gc_interval)),
            lease_ttl=float(_get(md, "lease_ttl", num, where, base.lease_ttl)))
    except InvalidInput as e:
        raise InvalidInput(f"{where}: {e}") from None


def _storage(table: dict[str, Any], where: str, base: StorageConfig,
             env: Mapping[str, str] = os.environ) -> StorageConfig:
    """``[storage]``; the S3 settings not in the file come from the AWS environment
    variables every S3 tool reads (AWS CLI, boto3, distribution's s3-aws driver)."""
    known = {f.name for f in fields(StorageConfig)}
    unknown = set(table) - known
    if unknown:
        raise InvalidInput(f"{where}: unknown [storage] key(s) {', '.join(sorted(unknown))}")
    driver = _get(table, "driver", str, where, base.driver)
    if driver not in ("local", "s3"):
        raise InvalidInput(f"{where}: storage driver {driver!r} is not one of local, s3")
    num = (int, float)
    cfg = StorageConfig(
        driver=driver,
        endpoint=_get(table, "endpoint", str, where, None)
        or env.get("AWS_ENDPOINT_URL_S3") or env.get("AWS_ENDPOINT_URL") or base.endpoint,
        region=_get(table, "region", str, where, None)
        or env.get("AWS_REGION") or env.get("AWS_DEFAULT_REGION") or base.region,
        bucket=_get(table, "bucket", str, where, base.bucket),
        access_key=_get(table, "access_key", str, where, None)
        or env.get("AWS_ACCESS_KEY_ID") or base.access_key,
        secret_key=_get(table, "secret_key", str, where, None)
        or env.get("AWS_SECRET_ACCESS_KEY") or base.secret_key,
        prefix=_get(table, "prefix", str, where, base.prefix).strip("/"),
        redirect=_get(table, "redirect", bool, where, base.redirect),
        redirect_ttl=_get(table, "redirect_ttl", int, where, base.redirect_ttl),
        part_size=_get(table, "part_size", int, where, base.part_size),
        connect_timeout=float(_get(table, "connect_timeout", num, where,
                                   base.connect_timeout)),
        read_timeout=float(_get(table, "read_timeout", num, where, base.read_timeout)),
    )
    if cfg.prefix:
        cfg = replace(cfg, prefix=cfg.prefix + "/")
    if driver == "s3":
        if not cfg.bucket:
            raise InvalidInput(f"{where}: [storage] s3 needs a bucket")
        if cfg.part_size < 5 * 1024 * 1024:
            raise InvalidInput(f"{where}: part_size must be at least 5 MiB (S3's minimum)")
        if not 1 <= cfg.redirect_ttl <= 7 * 86400:
            raise InvalidInput(f"{where}: redirect_ttl must be 1 s to 7 days")
    return cfg
