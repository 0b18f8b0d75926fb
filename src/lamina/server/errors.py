"""Error answers, exactly as distribution-spec 1.1 "Error Codes" lists them.

Every failure a handler reports is a ``RegistryHTTPError``: the HTTP status, one of the
spec's codes and a message a person can act on.  The app turns it into the spec's body
``{"errors": [{"code", "message", "detail"}]}`` (application/json) in one place, so no
handler ever writes an error body by hand.

    code                   status  when
    BLOB_UNKNOWN           404     blob not linked to the repository (or gone)
    BLOB_UPLOAD_INVALID    400/416 bad upload request; 416 for a chunk out of order
    BLOB_UPLOAD_UNKNOWN    404     no such upload session (expired, finished, cancelled)
    DIGEST_INVALID         400     malformed digest, or content that does not match it
    MANIFEST_BLOB_UNKNOWN  400     a manifest names a blob/manifest the repository lacks
    MANIFEST_INVALID       400     not a manifest lamina can validate (or a bad tag)
    MANIFEST_UNKNOWN       404     no such tag or manifest in the repository
    NAME_INVALID           400     repository name outside the spec's grammar
    NAME_UNKNOWN           404     no such repository
    SIZE_INVALID           400/413 length mismatch; 413 over a configured limit
    UNAUTHORIZED           401     credentials needed (with a WWW-Authenticate challenge)
    DENIED                 403     authenticated, but not allowed
    UNSUPPORTED            400/405 an operation this registry does not do
    TOOMANYREQUESTS        429     over the per-client request rate (with Retry-After)
"""

from __future__ import annotations

import json
from typing import Any

ERROR_CODES = frozenset({
    "BLOB_UNKNOWN", "BLOB_UPLOAD_INVALID", "BLOB_UPLOAD_UNKNOWN", "DIGEST_INVALID",
    "MANIFEST_BLOB_UNKNOWN", "MANIFEST_INVALID", "MANIFEST_UNKNOWN", "NAME_INVALID",
    "NAME_UNKNOWN", "SIZE_INVALID", "UNAUTHORIZED", "DENIED", "UNSUPPORTED",
    "TOOMANYREQUESTS",
    "UNAVAILABLE",      # distribution's errcode.ErrorCodeUnavailable (503)
})


class RegistryHTTPError(Exception):
    """An error answer: ``status``, spec ``code``, ``message``, optional ``detail`` and
    extra response headers (challenges, Retry-After, Range)."""

    def __init__(self, status: int, code: str, message: str, detail: Any = None,
                 headers: dict[str, str] | None = None) -> None:
        assert code in ERROR_CODES, code
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message
        self.detail = detail
        self.headers = dict(headers or {})

    def body(self) -> bytes:
        entry: dict[str, Any] = {"code": self.code, "message": self.message}
        if self.detail is not None:
            entry["detail"] = self.detail
        return json.dumps({"errors": [entry]}, separators=(",", ":")).encode()


def blob_unknown(digest: str) -> RegistryHTTPError:
    return RegistryHTTPError(404, "BLOB_UNKNOWN", f"blob {digest} is not in this repository",
                             {"digest": digest})


def manifest_unknown(reference: str) -> RegistryHTTPError:
    return RegistryHTTPError(404, "MANIFEST_UNKNOWN",
                             f"manifest {reference} is not in this repository",
                             {"reference": reference})


def upload_unknown(uuid: str) -> RegistryHTTPError:
    return RegistryHTTPError(404, "BLOB_UPLOAD_UNKNOWN",
                             f"upload {uuid} is unknown (finished, cancelled or expired)")


def digest_invalid(message: str, digest: str | None = None) -> RegistryHTTPError:
    return RegistryHTTPError(400, "DIGEST_INVALID", message,
                             {"digest": digest} if digest else None)


def name_unknown(name: str) -> RegistryHTTPError:
    return RegistryHTTPError(404, "NAME_UNKNOWN", f"repository {name} is not known",
                             {"name": name})
