"""The pull/push/copy/login commands end to end against a real docker-registry."""

from __future__ import annotations

import json
import os
import subprocess
import uuid
from pathlib import Path

from registry_servers import DockerRegistry, count

from lamina_testing import Lamina, need, tree_listing

USER, PASSWORD = "lamina", "correct horse"


def _repo(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:8]}"


def test_push_b_after_a_then_pull_into_an_empty_store(seeded: Lamina, registry: DockerRegistry,
                                                       tmp_path: Path) -> None:
    ns = _repo("cli")
    a, b = f"{registry.host}/{ns}/a", f"{registry.host}/{ns}/b"
    seeded.run("tag", "demo/a", a)
    seeded.run("tag", "demo/b", b)
    out_a = seeded.run("push", a).out.splitlines()
    assert out_a[0] == f"The push refers to repository [{a}]"
    assert sorted(line.split(": ", 1)[1] for line in out_a[1:5]) == ["Pushed"] * 4
    assert out_a[-1].startswith("latest: digest: sha256:")
    out_b = seeded.run("push", b).out.splitlines()
    statuses = sorted(line.split(": ", 1)[1] for line in out_b[1:5])
    assert statuses == ["Mounted from " + f"{ns}/a"] * 3 + ["Pushed"]
    # on the wire: B uploaded its one layer and its config, and mounted three layers
    reqs = registry.requests(f"{ns}/b")
    assert count(reqs, "PUT", r"/blobs/uploads/") == 2
    assert count(reqs, "POST", r"mount=") == 3
    # pull both into an empty store: B's three shared layers already exist
    other = Lamina(tmp_path / "other", tmp_path)
    pulled_a = other.run("pull", "--jobs", "1", a).out.splitlines()
    assert pulled_a[0] == f"latest: Pulling from {ns}/a"
    assert sum(line.endswith(": Pull complete") for line in pulled_a) == 4
    pulled_b = other.run("pull", "--jobs", "1", b).out.splitlines()
    assert sum(line.endswith(": Already exists") for line in pulled_b) == 3
    assert sum(line.endswith(": Pull complete") for line in pulled_b) == 1
    assert pulled_b[-1] == f"Status: Downloaded newer image for {b}:latest"
    assert other.run("pull", b).out.splitlines()[-1] == \
        f"Status: Image is up to date for {b}:latest"
    # what came back is what went out
    seeded.run("unpack", "demo/b", tmp_path / "mine")
    other.run("unpack", b, tmp_path / "theirs")
    assert tree_listing(tmp_path / "mine") == tree_listing(tmp_path / "theirs")
    other.assert_consistent()


def test_pull_by_digest_and_copy_between_places(seeded: Lamina, registry: DockerRegistry,
                                                tmp_path: Path) -> None:
    ref = f"{registry.host}/{_repo('copy')}/a"
    seeded.run("copy", "demo/a", f"docker://{ref}:v1")
    digest = seeded.run("inspect", "demo/a").json()[0]["Digest"]
    other = Lamina(tmp_path / "o", tmp_path)
    other.run("pull", f"{ref}@{digest}")
    assert other.run("images", "--json").json()[0]["tag"] == "<none>"
    res = other.run("copy", "--json", f"docker://{ref}:v1",
                    f"oci:{tmp_path / 'layout'}:v1").json()
    assert res["digest"] == digest and res["copied"] + res["skipped"] == 5
    other.run("copy", f"oci:{tmp_path / 'layout'}:v1", "docker-archive:"
              f"{tmp_path / 'a.tar'}:copied/a:v1")
    third = Lamina(tmp_path / "t", tmp_path)
    assert third.run("load", tmp_path / "a.tar").out.strip() == "Loaded image: copied/a:v1"
    skopeo = need("skopeo")
    info = json.loads(subprocess.run(
        [skopeo, "inspect", "--tls-verify=false", f"docker://{ref}:v1"],
        capture_output=True, text=True, check=True).stdout)
    assert info["Digest"] == digest


def test_login_push_logout(seeded: Lamina, tls_registry: DockerRegistry, tmp_path: Path
                           ) -> None:
    host = tls_registry.host
    cert = tls_registry.tls[0] if tls_registry.tls else None
    assert cert is not None
    ref = f"{host}/{_repo('auth')}/a"
    seeded.run("tag", "demo/a", ref)
    denied = seeded.fail("push", "--ca-bundle", cert, ref)
    assert "requires authentication" in denied.err and f"lamina login {host}" in denied.err
    bad = seeded.fail("login", "--ca-bundle", cert, "-u", USER, "-p", "wrong", host)
    assert bad.code != 0
    assert seeded.run("login", "--ca-bundle", cert, "-u", USER, "-p", PASSWORD,
                      host).out.strip() == "Login Succeeded"
    seeded.run("push", "--ca-bundle", cert, ref)
    assert "Removing login credentials" in seeded.run("logout", host).out
    assert "requires authentication" in seeded.fail("pull", "--ca-bundle", cert, ref).err


def test_unreachable_registry_is_one_line(seeded: Lamina) -> None:
    from registry_servers import free_port

    res = seeded.fail("push", "demo/a", f"127.0.0.1:{free_port()}/x/y")
    assert "cannot connect" in res.err and len(res.err.strip().splitlines()) == 1
    res = seeded.fail("pull", f"127.0.0.1:{free_port()}/x/y")
    assert "cannot connect" in res.err
    seeded.assert_consistent()


def test_pull_and_push_load_only_what_moving_bytes_needs(tmp_path: Path) -> None:
    """The CLI's fixed cost is most of a small pull: ``pull`` and ``push`` must not drag
    in an HTTP library, rich (terminal drawing) or urllib.request (proxies, only when the
    environment names one).  Checked on the modules loaded by a run that fails at
    once on a closed port."""
    import sys

    script = ("import sys\nfrom lamina.cli.main import main\n"
              "try:\n    main(fast_exit=False)\nexcept SystemExit:\n    pass\n"
              "sys.stdout.write(' '.join(sorted(sys.modules)))\n")
    env = {k: v for k, v in os.environ.items() if not k.lower().endswith("_proxy")}
    env["LAMINA_ROOT"] = str(tmp_path / "store")
    for argv in (["pull", "-q", "127.0.0.1:9/x:v1"], ["push", "-q", "x:v1", "127.0.0.1:9/x"]):
        proc = subprocess.run([sys.executable, "-c", script, *argv], capture_output=True,
                              text=True, env=env, timeout=60)
        loaded = set(proc.stdout.split())
        assert "lamina.transport.registry.wire" in loaded or argv[0] == "push", proc
        heavy = {m for m in loaded if m.split(".")[0] in (
            "httpx", "httpcore", "h11", "anyio", "rich", "pygments")}
        assert not heavy and "urllib.request" not in loaded, (argv, sorted(heavy))


def test_inspect_commands_read_a_registry(seeded: Lamina, registry: DockerRegistry) -> None:
    ref = f"{registry.host}/{_repo('inspect')}/b"
    seeded.run("push", "demo/b", ref)
    for cmd in (("history", "--json"), ("layers", "--json"), ("efficiency", "--json")):
        local = seeded.run(*cmd, "demo/b").json()
        remote = seeded.run(*cmd, f"docker://{ref}").json()
        assert remote == local, cmd
    which = seeded.run("which", "--json", f"docker://{ref}", "/var/www/html/index.html").json()
    assert which == seeded.run("which", "--json", "demo/b", "/var/www/html/index.html").json()


def test_build_pulls_a_missing_base(seeded: Lamina, registry: DockerRegistry,
                                    tmp_path: Path) -> None:
    ref = f"{registry.host}/{_repo('base')}/a:v1"
    seeded.run("push", "demo/a", ref)
    other = Lamina(tmp_path / "o", tmp_path)
    ctx = tmp_path / "ctx"
    ctx.mkdir()
    (ctx / "Containerfile").write_text(f"FROM {ref}\nRUN echo built > /built\n")
    out = other.run("build", "-t", "child", ctx).out
    assert f"---> pulling docker://{ref}" in out
    other.run("unpack", "child", tmp_path / "r")
    assert (tmp_path / "r/built").read_text() == "built\n"
    assert (tmp_path / "r/var/www/html/index.html").exists()


def test_insecure_push_to_plain_http_with_parallel_blobs(seeded: Lamina,
                                                          registry: DockerRegistry) -> None:
    """#10.10: ``--insecure`` tries TLS first and falls back to http when the registry does
    not speak it.  With ``-j 4`` the first requests (a HEAD per blob) go at once; every one
    of them must end up on http, not only the first to learn it.  Five fresh repositories,
    so each push starts cold with five blobs in flight."""
    ns = _repo("insecure")
    for n in range(5):
        ref = f"{registry.host}/{ns}/img{n}"
        res = seeded.run("push", "--insecure", "-j", "4", "demo/a", ref, check=False)
        assert res.code == 0, (n, res.err)
        assert res.out.splitlines()[-1].startswith("latest: digest: sha256:")
    assert len(registry.requests(f"{ns}/img4")) > 0


def test_login_without_a_terminal_and_with_a_wrong_password(
        seeded: Lamina, tls_registry: DockerRegistry) -> None:
    """#10.18: no tty and no --password-stdin is one line (no GetPassWarning, no
    "Aborted!"); a wrong password says so, not "check lamina login"."""
    import sys

    host = tls_registry.host
    cert = tls_registry.tls[0] if tls_registry.tls else None
    assert cert is not None
    lamina = str(Path(sys.executable).parent / "lamina")
    for args, message in (
            (["-u", USER], "no terminal to ask for a password: use --password-stdin"),
            ([], "no terminal to ask for a username: use --username and --password-stdin"),
            (["--password-stdin"], "--password-stdin needs --username")):
        proc = subprocess.run([lamina, "login", "--ca-bundle", str(cert), *args, host],
                              stdin=subprocess.DEVNULL, capture_output=True, text=True,
                              env=seeded.env, timeout=60)
        assert (proc.returncode, proc.stderr) == (3, f"lamina: {message}\n"), args
    bad = seeded.fail("login", "--ca-bundle", cert, "-u", USER, "-p", "wrong", host)
    assert (bad.code, bad.err) == (6, f"lamina: login to {host} failed: unauthorized: "
                                      "incorrect username or password\n")
    assert not (Path(seeded.env["LAMINA_AUTH"]).exists()
                and host in Path(seeded.env["LAMINA_AUTH"]).read_text())
    proc = subprocess.run([lamina, "login", "--ca-bundle", str(cert), "-u", USER,
                           "--password-stdin", host], input=PASSWORD + "\n",
                          capture_output=True, text=True, env=seeded.env, timeout=60)
    assert (proc.returncode, proc.stdout) == (0, "Login Succeeded\n"), proc.stderr
