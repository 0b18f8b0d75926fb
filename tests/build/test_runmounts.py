"""RUN --mount / --network / build --secret / --ssh: the parsers, no process run."""

from __future__ import annotations

import os
import socket
from pathlib import Path

import pytest

from lamina.build.buildsecrets import parse_secret, parse_ssh
from lamina.build.dockerfile import parse
from lamina.build.runmounts import MountSpec, parse_mount, parse_network
from lamina.errors import InvalidInput, NotFound


def test_defaults_are_buildkits() -> None:
    cache = parse_mount("type=cache,target=/root/.cache/pip")
    assert cache == MountSpec("cache", "/root/.cache/pip", id="/root/.cache/pip",
                              readonly=False, sharing="shared")
    bind = parse_mount("target=/src")          # bind is the default type, read-only
    assert (bind.type, bind.readonly, bind.source, bind.from_) == ("bind", True, "", "")
    assert parse_mount("type=bind,target=/src,rw").readonly is False
    assert parse_mount("type=bind,target=/src,readwrite=true").readonly is False
    assert parse_mount("type=cache,target=/c,ro").readonly is True
    assert parse_mount("type=tmpfs,target=/t,size=64m").size == 64 * 1024 * 1024
    secret = parse_mount("type=secret,id=npmrc")
    assert (secret.target, secret.mode, secret.required) == ("/run/secrets/npmrc", 0o400,
                                                             False)
    # id from the target's base name; env only: no file
    assert parse_mount("type=secret,target=/etc/token,required").id == "token"
    assert parse_mount("type=secret,id=tok,env=TOKEN").target == ""
    assert parse_mount("type=secret,id=tok,env=TOKEN,target=/t").target == "/t"
    ssh = parse_mount("type=ssh", index=1)
    assert (ssh.id, ssh.target, ssh.mode) == ("default", "/run/buildkit/ssh_agent.1", 0o600)
    assert parse_mount("type=cache,target=/c,mode=0700,uid=33,gid=33,sharing=locked") \
        == MountSpec("cache", "/c", id="/c", sharing="locked", mode=0o700, uid=33, gid=33)
    # values expand; keys and the csv quoting are the frontend's
    spec = parse_mount('type=cache,"target=/a,b",id=$X', lambda v: v.replace("$X", "x1"))
    assert (spec.target, spec.id) == ("/a,b", "x1")


def test_cache_key_material_is_the_specification() -> None:
    # Every field that is set, no value: a secret's key names it, never holds it.
    assert parse_mount("type=secret,id=tok,env=T").key() == {
        "type": "secret", "readonly": True, "id": "tok", "sharing": "shared",
        "mode": 0o400, "env": "T", "required": False}
    assert parse_mount("type=cache,target=/c").key() != parse_mount(
        "type=cache,target=/c,id=other").key()


@pytest.mark.parametrize(("text", "message"), [
    ("type=volume,target=/x", "unsupported mount type 'volume'"),
    ("type=cahce,target=/x", "did you mean cache?"),
    ("type=cache,target=/x,colour=red", "unexpected key 'colour'"),
    ("type=cache", "a cache mount needs a target"),
    ("type=cache,target=/x,sharing=maybe", "unsupported sharing value 'maybe'"),
    ("type=bind,target=/x,sharing=locked", "sharing is only for cache mounts"),
    ("type=bind,target=/x,mode=0600", "mode not allowed for 'bind' type mounts"),
    ("type=tmpfs,target=/x,uid=1", "uid not allowed for 'tmpfs' type mounts"),
    ("type=cache,target=/x,size=1m", "unexpected key 'size' for mount type 'cache'"),
    ("type=cache,target=/x,required", "unexpected key 'required'"),
    ("type=cache,target=/x,mode=999", "must be an octal mode"),
    ("type=cache,target=/x,uid=me", "must be a number"),
    ("type=cache,target=/x,ro=maybe", "must be true or false"),
    ("type=cache,target=/x,oops", "invalid field 'oops': must be a key=value pair"),
    ("type=secret,id=a,source=b", "id or source, not both"),
    ("type=secret", "needs an id"),
    ("type=secret,id=a,from=stage", "a secret mount takes no from"),
    ("type=cache,target=/", "cannot mount on /"),
    ("type=tmpfs,target=/t,size=lots", "is not a size"),
])
def test_bad_mounts_name_the_problem(text: str, message: str) -> None:
    with pytest.raises(InvalidInput) as err:
        parse_mount(text)
    assert message in err.value.message


def test_parser_checks_run_flags_with_the_line() -> None:
    with pytest.raises(InvalidInput) as err:
        parse("FROM scratch\n\nRUN --mount=type=cahce,target=/x true\n")
    assert err.value.message.startswith("Containerfile:3: --mount: unsupported mount type "
                                        "'cahce' (did you mean cache?)")
    with pytest.raises(InvalidInput) as err:
        parse("FROM scratch\nRUN --network=bridge true\n")
    assert err.value.message == ("Containerfile:2: --network: unsupported network mode "
                                 "'bridge'; use default, none, host")
    # a variable is checked once the executor has expanded it
    parse("FROM scratch\nARG T=cache\nRUN --mount=type=$T,target=/x --network=$N true\n")
    assert parse_network("NONE") == "none"


def test_secret_flag(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    f = tmp_path / "tok"
    f.write_bytes(b"abc")
    assert parse_secret(f"id=tok,src={f}").read() == b"abc"
    assert parse_secret(f"id=tok,source={f}").path == f
    monkeypatch.setenv("MY_TOKEN", "from-env")
    assert parse_secret("id=tok,env=MY_TOKEN").read() == b"from-env"
    assert parse_secret("id=MY_TOKEN").read() == b"from-env"   # buildx: env first
    monkeypatch.chdir(tmp_path)
    assert parse_secret("id=tok").read() == b"abc"             # then the file named id
    with pytest.raises(NotFound, match="no such file"):
        parse_secret("id=x,src=/nonexistent/file")
    with pytest.raises(InvalidInput, match="id is required"):
        parse_secret(f"src={f}")
    with pytest.raises(InvalidInput, match="unexpected key 'scr'"):
        parse_secret(f"id=x,scr={f}")


def test_ssh_flag(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "agent.sock"
    with socket.socket(socket.AF_UNIX) as s:
        s.bind(os.fspath(path))
        monkeypatch.setenv("SSH_AUTH_SOCK", os.fspath(path))
        assert parse_ssh("default").socket == path
        assert parse_ssh(f"work={path}").id == "work"
        with pytest.raises(InvalidInput, match="is not a socket"):
            parse_ssh(f"default={tmp_path}")
        monkeypatch.delenv("SSH_AUTH_SOCK")
        with pytest.raises(InvalidInput, match="SSH_AUTH_SOCK is not set"):
            parse_ssh("default")
