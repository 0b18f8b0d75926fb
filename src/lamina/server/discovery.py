"""Content discovery: ``/v2/<name>/tags/list``, ``/v2/_catalog`` and the referrers API
``/v2/<name>/referrers/<digest>`` (distribution-spec 1.1 "Content Discovery").

Lists come in byte order (Go's ``sort.Strings``), ``n`` limits a page (``n=0`` is an empty
page without ``Link``), ``last`` starts after a name, and a page that stops short of the
end carries ``Link: <…?n=N&last=X>; rel="next"``.
"""

from __future__ import annotations

import json
from typing import TYPE_CHECKING
from urllib.parse import quote

from lamina.image import mediatypes as mt
from lamina.server.errors import RegistryHTTPError, name_unknown
from lamina.server.http import JSON, Reply, Rq
from lamina.server.names import parse_digest

if TYPE_CHECKING:
    from lamina.server.app import Registry

MAX_PAGE = 10000


def _page_size(rq: Rq) -> int | None:
    text = rq.query("n")
    if text is None or text == "":
        return None
    if not text.isdigit():
        raise RegistryHTTPError(400, "UNSUPPORTED", f"n must be a non-negative integer, "
                                f"not {text[:40]!r}")
    return min(int(text), MAX_PAGE)


def _link(path: str, n: int, last: str) -> str:
    return f'<{path}?n={n}&last={quote(last, safe="")}>; rel="next"'


def _page(items: list[str], n: int | None, path: str) -> tuple[list[str], dict[str, str]]:
    """``items`` holds up to n+1 entries: the extra one says there is a next page."""
    headers = {"content-type": JSON}
    if n is not None and len(items) > n:
        items = items[:n]
        if n > 0:
            headers["link"] = _link(path, n, items[-1])
    return items, headers


async def list_tags(reg: Registry, rq: Rq) -> Reply:
    n = _page_size(rq)
    last = rq.query("last") or None
    if not reg.state.repo_exists(rq.repo):
        raise name_unknown(rq.name)
    tags = reg.state.tags(rq.repo, last, None if n is None else n + 1)
    tags, headers = _page(tags, n, f"/v2/{rq.name}/tags/list")
    body = json.dumps({"name": rq.name, "tags": tags}, separators=(",", ":")).encode()
    return Reply(200, headers, body)


async def catalog(reg: Registry, rq: Rq) -> Reply:
    n = _page_size(rq)
    last = rq.query("last") or None
    repos = [r for r in reg.state.repositories()
             if (last is None or r > last) and reg.may(rq, r, "pull")]
    repos, headers = _page(repos, n, "/v2/_catalog")
    body = json.dumps({"repositories": repos}, separators=(",", ":")).encode()
    return Reply(200, headers, body)


async def list_referrers(reg: Registry, rq: Rq) -> Reply:
    subject = parse_digest(rq.arg)
    refs = reg.state.referrers(rq.repo, str(subject))
    headers = {"content-type": mt.OCI_INDEX}
    wanted = rq.query("artifactType")
    if wanted:
        refs = [r for r in refs if r.artifact_type == wanted]
        headers["oci-filters-applied"] = "artifactType"
    body = json.dumps({"schemaVersion": 2, "mediaType": mt.OCI_INDEX,
                       "manifests": [r.descriptor() for r in refs]},
                      separators=(",", ":")).encode()
    return Reply(200, headers, body)
