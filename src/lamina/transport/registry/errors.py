"""Registry answers that are errors, turned into lamina errors in one place.

distribution-spec "Error Codes": a failed request may carry a JSON body
``{"errors": [{"code": ..., "message": ..., "detail": ...}]}``.  It is read once (at most
``MAX_ERROR_BODY`` bytes: a hostile or broken server cannot make us buffer more) and the
first entry becomes ``RegistryError.code``.  Categories follow ``lamina.errors``:

    RegistryError(TransportError)         exit 6  any other error status from a registry
    RegistryNotFound(NotFound, RegistryError) exit 2  404: repository, tag, blob unknown
    RegistryUnsupported(Unsupported, RegistryError) exit 7  415 / UNSUPPORTED
"""

from __future__ import annotations

from typing import Any

from lamina.errors import InvalidManifest, LaminaError, NotFound, TransportError, Unsupported
from lamina.image.jsondoc import load_json
from lamina.transport.registry.wire import Response, WireError

MAX_ERROR_BODY = 8 * 1024


class RegistryError(TransportError):
    """An error answer from a registry: ``status`` (HTTP) and ``code`` (distribution-spec
    error code such as ``MANIFEST_UNKNOWN``, or None when the body had none)."""

    registry: str = ""
    status: int | None = None
    code: str | None = None

    def __init__(self, message: str, *, registry: str = "", status: int | None = None,
                 code: str | None = None) -> None:
        super().__init__(message)
        self.registry = registry
        self.status = status
        self.code = code


class RegistryNotFound(NotFound, RegistryError):
    pass


class RegistryUnsupported(Unsupported, RegistryError):
    pass


def read_limited(resp: Response, limit: int) -> bytes:
    """At most ``limit`` bytes of a streamed response's body (then the rest is dropped
    with the connection)."""
    out = bytearray()
    try:
        for chunk in resp.iter_bytes():
            out += chunk
            if len(out) >= limit:
                break
    except WireError:
        pass  # an error body cut short is still worth what we got
    return bytes(out[:limit])


def _one_line(text: str, limit: int = 200) -> str:
    text = " ".join(text.split())
    return text if len(text) <= limit else text[: limit - 1] + "…"


def parse_error_body(body: bytes) -> tuple[str | None, str | None]:
    """(code, message) of the first distribution-spec error in ``body``, if any."""
    try:
        obj: Any = load_json(body, "error body")
    except InvalidManifest:
        return None, None
    errors = obj.get("errors") if isinstance(obj, dict) else None
    if not isinstance(errors, list) or not errors or not isinstance(errors[0], dict):
        # token servers answer {"details": "..."} or {"error": "..."}
        if isinstance(obj, dict):
            for key in ("details", "error_description", "error", "message"):
                if isinstance(obj.get(key), str):
                    return None, obj[key]
        return None, None
    first = errors[0]
    code = first.get("code") if isinstance(first.get("code"), str) else None
    message = first.get("message") if isinstance(first.get("message"), str) else None
    detail = first.get("detail")
    if isinstance(detail, str | int | float) and str(detail) and message:
        message = f"{message}: {detail}"
    return code, message


def error_from_response(resp: Response, registry: str, what: str,
                        authenticated: bool = False) -> LaminaError:
    """One clear line naming the registry and the object, from any error answer."""
    status = resp.status_code
    body = b"" if resp.method == "HEAD" else read_limited(resp, MAX_ERROR_BODY)
    code, message = parse_error_body(body)
    if message is None and body and not body.lstrip().startswith((b"{", b"<")):
        message = body.decode("utf-8", "replace")
    reason = _one_line(message) if message else ""
    tail = f" ({code}: {reason})" if code and reason else f" ({reason})" if reason else ""
    kw: dict[str, Any] = {"registry": registry, "status": status, "code": code}
    if status == 400 and b"HTTP request to an HTTPS server" in body:
        return RegistryError(f"{registry} speaks https: give its CA certificate "
                             "(--ca-bundle) or use --insecure", **kw)
    if status == 404:
        return RegistryNotFound(f"{registry}: {what} not found{tail}", **kw)
    if status == 401:
        if not authenticated:
            return RegistryError(f"{registry}: {what} requires authentication: "
                                 f"run lamina login {registry}", **kw)
        return RegistryError(f"{registry}: {what}: authentication failed{tail} "
                             f"(check lamina login {registry})", **kw)
    if status == 403:
        return RegistryError(f"{registry}: access to {what} denied{tail}", **kw)
    if status == 415 or code == "UNSUPPORTED":
        return RegistryUnsupported(f"{registry}: {what}: not supported by the registry{tail}",
                                   **kw)
    if status == 429:
        return RegistryError(f"{registry}: {what}: too many requests (HTTP 429){tail}", **kw)
    if status >= 500:
        return RegistryError(f"{registry}: {what}: server error (HTTP {status}){tail}", **kw)
    return RegistryError(f"{registry}: {what}: HTTP {status}{tail}", **kw)
