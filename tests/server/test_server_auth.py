"""Access, in-process: htpasswd basic auth, the token service (401 → token → retry),
per-repository rules, anonymous pull, denied and insufficient scopes, bad tokens."""

from __future__ import annotations

import base64
import json
import time
from pathlib import Path
from typing import Any

import bcrypt
import httpx
import pytest
from server_helpers import digest_of, error_code, make_image, push_image

from lamina.server import ServerConfig, load_config
from lamina.server.auth import Tokens

pytestmark = pytest.mark.anyio
USERS = {"alice": "wonderland", "bob": "builder", "carol": "singer"}


def write_config(tmp: Path, token: bool = True, anonymous_pull: bool = False) -> Path:
    lines = [f"{u}:{bcrypt.hashpw(p.encode(), bcrypt.gensalt(4)).decode()}"
             for u, p in USERS.items()]
    (tmp / "htpasswd").write_text("\n".join(lines) + "\n")
    (tmp / "serve.toml").write_text(f"""
[auth]
htpasswd = "htpasswd"
token = {str(token).lower()}
token_secret = "test-secret"
anonymous_pull = {str(anonymous_pull).lower()}

[groups]
builders = ["bob"]

[[access]]
who = ["alice"]
repositories = ["*"]
actions = ["*"]

[[access]]
who = ["@builders"]
repositories = ["team/*"]
actions = ["pull", "push"]

[[access]]
who = ["*"]
repositories = ["public/*"]
actions = ["pull"]
""")
    return tmp / "serve.toml"


def basic(user: str, password: str | None = None) -> dict[str, str]:
    raw = f"{user}:{USERS[user] if password is None else password}".encode()
    return {"Authorization": "Basic " + base64.b64encode(raw).decode()}


async def token(c: httpx.AsyncClient, scope: str, user: str | None = None,
                password: str | None = None) -> tuple[str, dict[str, Any]]:
    headers = basic(user, password) if user else {}
    r = await c.get("/token", params={"service": "lamina", "scope": scope}, headers=headers)
    assert r.status_code == 200, r.text
    tok = r.json()["token"]
    claims = json.loads(base64.urlsafe_b64decode(tok.split(".")[1] + "=="))
    return tok, claims


def bearer(tok: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {tok}"}


async def test_token_dance(make_client: Any, tmp_path: Path) -> None:
    _, c = make_client(load_config(write_config(tmp_path)))
    async with c:
        r = await c.get("/v2/")
        assert r.status_code == 401 and error_code(r) == "UNAUTHORIZED"
        assert r.headers["www-authenticate"] == \
            'Bearer realm="http://registry.test/token",service="lamina"'
        r = await c.get("/v2/team/app/manifests/latest")
        assert r.status_code == 401
        assert 'scope="repository:team/app:pull"' in r.headers["www-authenticate"]
        r = await c.post("/v2/team/app/blobs/uploads/")
        assert 'scope="repository:team/app:pull,push"' in r.headers["www-authenticate"]
        # alice: everything she asks for
        tok, claims = await token(c, "repository:team/app:pull,push", "alice")
        assert claims["sub"] == "alice" and claims["aud"] == "lamina"
        assert claims["access"] == [{"type": "repository", "name": "team/app",
                                     "actions": ["pull", "push"]}]
        c.headers.update(bearer(tok))
        assert (await c.get("/v2/")).status_code == 200
        image = make_image(1)
        await push_image(c, "team/app", "latest", image)
        # the token does not cover delete: a wider one is needed (she may)
        r = await c.delete(f"/v2/team/app/manifests/{image.digest}")
        assert r.status_code == 401 and 'error="insufficient_scope"' in \
            r.headers["www-authenticate"]
        tok, _ = await token(c, "repository:team/app:delete", "alice")
        r = await c.delete("/v2/team/app/manifests/latest", headers=bearer(tok))
        assert r.status_code == 202
        # bob asks for push on a repository he may only... not touch: granted nothing
        tok, claims = await token(c, "repository:other/app:pull,push", "bob")
        assert claims["access"][0]["actions"] == []
        r = await c.post("/v2/other/app/blobs/uploads/", headers=bearer(tok))
        assert r.status_code == 403 and error_code(r) == "DENIED"
        tok, claims = await token(c, "repository:team/app:pull,push,delete", "bob")
        assert claims["access"][0]["actions"] == ["pull", "push"]
        r = await c.delete(f"/v2/team/app/manifests/{image.digest}", headers=bearer(tok))
        assert r.status_code == 403 and error_code(r) == "DENIED"
        # wrong password: no token
        r = await c.get("/token", params={"scope": "repository:team/app:pull"},
                        headers=basic("alice", "wrong"))
        assert r.status_code == 401 and error_code(r) == "UNAUTHORIZED"
        # OAuth2 password grant (POST form)
        r = await c.post("/token", data={"grant_type": "password", "username": "carol",
                                         "password": USERS["carol"], "service": "lamina",
                                         "scope": "repository:public/x:pull,push"})
        assert r.status_code == 200
        assert json.loads(base64.urlsafe_b64decode(r.json()["token"].split(".")[1] + "=="))[
            "access"][0]["actions"] == ["pull"]


async def test_bad_tokens(make_client: Any, tmp_path: Path) -> None:
    cfg = load_config(write_config(tmp_path))
    _, c = make_client(cfg)
    async with c:
        tok, _ = await token(c, "repository:team/app:pull", "alice")
        head, payload, sig = tok.split(".")
        claims = json.loads(base64.urlsafe_b64decode(payload + "=="))
        claims["access"][0]["name"] = "secret/thing"
        forged = base64.urlsafe_b64encode(json.dumps(claims).encode()).rstrip(b"=").decode()
        other = Tokens("lamina", 300, "another-secret").issue("alice", claims["access"])
        expired = Tokens("lamina", 300, "test-secret").issue(
            "alice", claims["access"], now=time.time() - 3600)
        wrong_aud = Tokens("elsewhere", 300, "test-secret").issue("alice", claims["access"])
        for bad in (f"{head}.{forged}.{sig}", other, expired, wrong_aud, "x.y.z", "garbage"):
            r = await c.get("/v2/secret/thing/tags/list", headers=bearer(bad))
            assert r.status_code == 401, bad
            assert 'error="invalid_token"' in r.headers["www-authenticate"]


async def test_basic_mode_and_anonymous_pull(make_client: Any, tmp_path: Path) -> None:
    _, c = make_client(load_config(write_config(tmp_path, token=False, anonymous_pull=True)))
    async with c:
        image = make_image(2)
        r = await c.post("/v2/team/app/blobs/uploads/")
        assert r.status_code == 401 and r.headers["www-authenticate"] == 'Basic realm="lamina"'
        c.headers.update(basic("bob"))
        await push_image(c, "team/app", "latest", image)
        del c.headers["authorization"]
        r = await c.get("/v2/team/app/manifests/latest")        # anonymous pull is on
        assert r.status_code == 200
        assert (await c.get("/v2/")).status_code == 200
        r = await c.get("/v2/team/app/tags/list", headers=basic("bob", "wrong"))
        assert r.status_code == 401
        r = await c.post("/v2/public/x/blobs/uploads/", headers=basic("carol"))
        assert r.status_code == 403 and error_code(r) == "DENIED"
        assert (await c.get("/token")).status_code == 200     # the service still answers


async def test_mount_needs_pull_on_origin(make_client: Any, tmp_path: Path) -> None:
    _, c = make_client(load_config(write_config(tmp_path, token=False)))
    async with c:
        blob = b"secret layer"
        r = await c.post("/v2/private/src/blobs/uploads/", headers=basic("alice"))
        d = digest_of(blob)
        r = await c.put(r.headers["location"], params={"digest": d}, content=blob,
                        headers=basic("alice"))
        assert r.status_code == 201
        # bob may push team/* but not pull private/*: no mount, an upload session instead
        r = await c.post("/v2/team/x/blobs/uploads/", params={"mount": d,
                                                             "from": "private/src"},
                         headers=basic("bob"))
        assert r.status_code == 202
        r = await c.post("/v2/team/x/blobs/uploads/", params={"mount": d},
                         headers=basic("bob"))
        assert r.status_code == 202
        r = await c.post("/v2/team/x/blobs/uploads/", params={"mount": d,
                                                             "from": "private/src"},
                         headers=basic("alice"))
        assert r.status_code == 201
        # the catalog lists what the asker may pull
        c.headers.update(basic("alice"))
        await push_image(c, "private/src", "latest", make_image(3))
        await push_image(c, "public/pkg", "latest", make_image(4))
        del c.headers["authorization"]
        r = await c.get("/v2/_catalog", headers=basic("carol"))
        assert r.json()["repositories"] == ["public/pkg"]
        r = await c.get("/v2/_catalog", headers=basic("alice"))
        assert r.json()["repositories"] == ["private/src", "public/pkg"]


async def test_no_auth_config_is_open(client: httpx.AsyncClient) -> None:
    r = await client.get("/token")
    assert r.status_code == 404
    assert (await client.get("/v2/")).status_code == 200
    assert ServerConfig().auth.enabled is False
