"""Authentication: htpasswd (basic) over TLS on a real docker-registry, the bearer-token
dance against the fake's token service, login/logout and where credentials are found."""

from __future__ import annotations

import base64
import json
import stat
from pathlib import Path

import pytest
from registry_servers import PASSWORD, USER, DockerRegistry, FakeRegistry, pull_image, push_image

from lamina.image.reference import Reference
from lamina.store.store import Store
from lamina.transport.copy import CopyOptions
from lamina.transport.registry import (
    Credentials,
    RegistryError,
    RegistryOptions,
    lamina_auth_path,
    login,
    logout,
    registry_base_url,
)
from lamina.transport.registry.auth import parse_www_authenticate
from lamina_testing import Lamina


def ca(reg: DockerRegistry) -> RegistryOptions:
    assert reg.tls is not None
    return RegistryOptions(ca_bundle=reg.tls[0])


def test_htpasswd_over_tls(seeded: Lamina, tls_registry: DockerRegistry, tmp_path: Path) -> None:
    host = tls_registry.host
    dest = Reference.parse(f"{host}/secure/a:v1")
    with Store(seeded.root) as store:
        # no credentials: one line that says what to do
        with pytest.raises(RegistryError) as info:
            push_image(store, "demo/a", dest, ca(tls_registry))
        assert str(info.value).endswith(f"requires authentication: run lamina login {host}")
        # wrong password: login refuses and stores nothing
        with pytest.raises(RegistryError, match="incorrect username or password"):
            login(host, USER, "wrong", ca(tls_registry))
        assert not lamina_auth_path().exists()
        login(host, USER, PASSWORD, ca(tls_registry))
        path = lamina_auth_path()
        assert stat.S_IMODE(path.stat().st_mode) == 0o600
        entry = json.loads(path.read_text())["auths"][host]
        assert base64.b64decode(entry["auth"]).decode() == f"{USER}:{PASSWORD}"
        push_image(store, "demo/a", dest, ca(tls_registry))          # creds from the file
    other = Lamina(tmp_path / "other", tmp_path)
    with Store(other.root) as store:
        # an unverified https connection with --insecure works too
        pull_image(store, dest, RegistryOptions(insecure=True))
    other.assert_consistent()
    assert logout(host) is True
    assert logout(host) is False
    with Store(other.root) as store, pytest.raises(RegistryError, match="run lamina login"):
        pull_image(store, dest, ca(tls_registry))


def test_tls_registry_without_its_ca(tls_registry: DockerRegistry, lamina: Lamina) -> None:
    host = tls_registry.host
    ref = Reference.parse(f"{host}/secure/a:v1")
    with Store(lamina.root) as store:
        # loopback means http by default: the registry says it wants https
        with pytest.raises(RegistryError, match="speaks https: give its CA certificate"):
            pull_image(store, ref)
        # https without the CA: verification fails, with a hint
        with pytest.raises(Exception, match=r"TLS failed: .*\(use --insecure"):
            pull_image(store, Reference.parse(f"localhost:{tls_registry.port}/secure/a:v1"),
                       RegistryOptions(ca_bundle=Path("/etc/ssl/certs/ca-certificates.crt")))


def test_docker_config_credentials(seeded: Lamina, tls_registry: DockerRegistry,
                                   tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    docker = tmp_path / "dockercfg"
    docker.mkdir()
    auth = base64.b64encode(f"{USER}:{PASSWORD}".encode()).decode()
    (docker / "config.json").write_text(json.dumps(
        {"auths": {f"https://{tls_registry.host}": {"auth": auth}}}))
    monkeypatch.setenv("DOCKER_CONFIG", str(docker))
    with Store(seeded.root) as store:
        push_image(store, "demo/b", Reference.parse(f"{tls_registry.host}/fromdocker/b:v1"),
                   ca(tls_registry))


def test_bearer_token_dance(seeded: Lamina, fake: FakeRegistry, tmp_path: Path) -> None:
    fake.auth = "bearer"
    fake.users = {USER: PASSWORD}
    creds = RegistryOptions(credentials=Credentials(USER, PASSWORD), backoff=0.01)
    dest = Reference.parse(f"{fake.host}/tok/a:v1")
    with Store(seeded.root) as store:
        push_image(store, "demo/a", dest, creds)
    # one token for the push scope, fetched on the first 401 and then sent up front
    assert fake.token_log == [["repository:tok/a:pull,push"]]
    unauthorised = [r for r in fake.log if r[0] != "GET" or r[1] != "/token"]
    assert len(unauthorised) > 10
    other = Lamina(tmp_path / "other", tmp_path)
    with Store(other.root) as store:
        pull_image(store, dest, creds, CopyOptions(jobs=3))
    assert fake.token_log[1:] == [["repository:tok/a:pull"]]
    other.assert_consistent()
    # no credentials: the token service refuses, the message says what to do
    third = Lamina(tmp_path / "third", tmp_path)
    with Store(third.root) as store, pytest.raises(RegistryError) as info:
        pull_image(store, dest, RegistryOptions())
    assert str(info.value) == (f"{fake.host}: manifest tok/a:v1 requires authentication: "
                               f"run lamina login {fake.host}")
    # bad credentials: the token service says so
    with Store(third.root) as store, pytest.raises(RegistryError) as info:
        pull_image(store, dest, RegistryOptions(credentials=Credentials(USER, "nope")))
    assert "authentication failed (incorrect username or password)" in str(info.value)
    third.assert_consistent()


def test_bearer_login_and_mount_scope(seeded: Lamina, fake: FakeRegistry) -> None:
    fake.auth = "bearer"
    fake.users = {USER: PASSWORD}
    login(fake.host, USER, PASSWORD)
    with pytest.raises(RegistryError, match="^login to .* failed: unauthorized: incorrect "):
        login(fake.host, USER, "bad")
    with Store(seeded.root) as store:
        push_image(store, "demo/a", Reference.parse(f"{fake.host}/m/src:v1"))
        fates: list[str] = []
        push_image(store, "demo/a", Reference.parse(f"{fake.host}/m/dst:v1"),
                   mount_from=lambda d: "m/src", on_blob=lambda p: fates.append(p.kind))
    assert fates == ["mounted"] * 5
    assert ["repository:m/dst:pull,push", "repository:m/src:pull"] in fake.token_log


def test_challenge_parsing_and_base_urls() -> None:
    [bearer, basic] = parse_www_authenticate(
        'Bearer realm="https://auth.example/token",service="registry.example",'
        'scope="repository:a/b:pull,push", Basic realm="x"')
    assert bearer.scheme == "bearer" and basic.scheme == "basic"
    assert bearer.params == {"realm": "https://auth.example/token",
                             "service": "registry.example",
                             "scope": "repository:a/b:pull,push"}
    assert registry_base_url("localhost:5000") == "http://localhost:5000"
    assert registry_base_url("127.0.0.1:5000") == "http://127.0.0.1:5000"
    assert registry_base_url("[::1]:5000") == "http://[::1]:5000"
    assert registry_base_url("example.com") == "https://example.com"
    assert registry_base_url("docker.io") == "https://registry-1.docker.io"
    assert registry_base_url("localhost:5000", RegistryOptions(ca_bundle=Path("x"))) == \
        "https://localhost:5000"
