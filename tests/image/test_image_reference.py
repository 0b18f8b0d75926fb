"""Image references, normalised as Docker (distribution/reference) does."""

from __future__ import annotations

import pytest

from lamina.digest import Digest
from lamina.errors import InvalidInput, InvalidReference
from lamina.image.reference import Reference

DG = "sha256:" + "ab" * 32

# input → (registry, repository, tag, digest, str, familiar)
GOOD: list[tuple[str, tuple[str, str, str | None, str | None, str, str]]] = [
    ("busybox", ("docker.io", "library/busybox", "latest", None,
                 "docker.io/library/busybox:latest", "busybox:latest")),
    ("busybox:1.36", ("docker.io", "library/busybox", "1.36", None,
                      "docker.io/library/busybox:1.36", "busybox:1.36")),
    ("library/busybox", ("docker.io", "library/busybox", "latest", None,
                         "docker.io/library/busybox:latest", "busybox:latest")),
    ("docker.io/busybox", ("docker.io", "library/busybox", "latest", None,
                           "docker.io/library/busybox:latest", "busybox:latest")),
    ("docker.io/library/busybox:latest", ("docker.io", "library/busybox", "latest", None,
                                          "docker.io/library/busybox:latest",
                                          "busybox:latest")),
    ("index.docker.io/library/busybox", ("docker.io", "library/busybox", "latest", None,
                                         "docker.io/library/busybox:latest",
                                         "busybox:latest")),
    ("registry-1.docker.io/me/app:v2", ("docker.io", "me/app", "v2", None,
                                        "docker.io/me/app:v2", "me/app:v2")),
    ("me/app", ("docker.io", "me/app", "latest", None, "docker.io/me/app:latest",
                "me/app:latest")),
    ("docker.io/library/a/b", ("docker.io", "library/a/b", "latest", None,
                               "docker.io/library/a/b:latest", "library/a/b:latest")),
    ("ghcr.io/org/team/app:1.0", ("ghcr.io", "org/team/app", "1.0", None,
                                  "ghcr.io/org/team/app:1.0", "ghcr.io/org/team/app:1.0")),
    ("localhost/app", ("localhost", "app", "latest", None, "localhost/app:latest",
                       "localhost/app:latest")),
    ("localhost:5000/a/b:tag", ("localhost:5000", "a/b", "tag", None,
                                "localhost:5000/a/b:tag", "localhost:5000/a/b:tag")),
    ("127.0.0.1:5000/app", ("127.0.0.1:5000", "app", "latest", None,
                            "127.0.0.1:5000/app:latest", "127.0.0.1:5000/app:latest")),
    ("[::1]:5000/app:v1", ("[::1]:5000", "app", "v1", None, "[::1]:5000/app:v1",
                           "[::1]:5000/app:v1")),
    ("Registry.Example.COM/app", ("Registry.Example.COM", "app", "latest", None,
                                  "Registry.Example.COM/app:latest",
                                  "Registry.Example.COM/app:latest")),
    (f"busybox@{DG}", ("docker.io", "library/busybox", None, DG,
                       f"docker.io/library/busybox@{DG}", f"busybox@{DG}")),
    (f"busybox:1.36@{DG}", ("docker.io", "library/busybox", "1.36", DG,
                            f"docker.io/library/busybox:1.36@{DG}", f"busybox:1.36@{DG}")),
    (f"localhost:5000/app@{DG}", ("localhost:5000", "app", None, DG,
                                  f"localhost:5000/app@{DG}", f"localhost:5000/app@{DG}")),
    ("localhost:5000", ("docker.io", "library/localhost", "5000", None,   # as Docker reads it
                        "docker.io/library/localhost:5000", "localhost:5000")),
    ("a.b-c/e__f-g--h.i_j:T_1.x-y", ("a.b-c", "e__f-g--h.i_j", "T_1.x-y", None,
                                     "a.b-c/e__f-g--h.i_j:T_1.x-y",
                                     "a.b-c/e__f-g--h.i_j:T_1.x-y")),
    ("busybox:" + "t" * 128, ("docker.io", "library/busybox", "t" * 128, None,
                              "docker.io/library/busybox:" + "t" * 128,
                              "busybox:" + "t" * 128)),
    ("busybox:_under", ("docker.io", "library/busybox", "_under", None,
                        "docker.io/library/busybox:_under", "busybox:_under")),
]


@pytest.mark.parametrize(("text", "want"), GOOD, ids=[g[0][:40] for g in GOOD])
def test_parse(text: str, want: tuple[str, str, str | None, str | None, str, str]) -> None:
    ref = Reference.parse(text)
    registry, repository, tag, digest, full, familiar = want
    assert (ref.registry, ref.repository, ref.tag) == (registry, repository, tag)
    assert ref.digest == (Digest.parse(digest) if digest else None)
    assert str(ref) == full
    assert ref.familiar == familiar
    # The full form is a fixed point.
    assert Reference.parse(full) == ref


def test_no_default_tag() -> None:
    ref = Reference.parse("busybox", default_tag=False)
    assert ref.tag is None and str(ref) == "docker.io/library/busybox"
    assert ref.name == "docker.io/library/busybox" and ref.familiar_name == "busybox"


def test_with_tag_and_digest() -> None:
    ref = Reference.parse(f"me/app:v1@{DG}")
    assert str(ref.with_tag("v2")) == "docker.io/me/app:v2"
    assert str(ref.with_digest(Digest.parse("sha256:" + "c" * 64))) == \
        "docker.io/me/app@sha256:" + "c" * 64


BAD: list[tuple[str, str]] = [
    ("", r"invalid reference ''"),
    (" busybox", r"invalid reference ' busybox'"),
    ("busybox ", r"invalid reference"),
    ("Busybox", r"repository name must be lowercase"),
    ("me/App:v1", r"repository name must be lowercase"),
    ("docker.io/Library/busybox", r"repository name must be lowercase"),
    ("busybox:", r"^invalid tag '' in 'busybox:'$"),
    ("busybox:-x", r"invalid tag '-x'"),
    ("busybox:.x", r"invalid tag '\.x'"),
    ("busybox:a+b", r"invalid tag 'a\+b'"),
    ("busybox:" + "t" * 129, r"invalid tag"),
    ("busybox:a:b", r"invalid"),
    ("busybox@sha256:abc", r"invalid sha256 digest 'sha256:abc'"),
    ("busybox@md5:" + "a" * 32, r"unsupported digest algorithm 'md5'"),
    ("busybox@", r"invalid digest ''"),
    ("a//b", r"bad name component ''"),
    ("/busybox", r"bad name component ''"),
    ("busybox/", r"bad name component ''"),
    ("-busybox", r"bad name component '-busybox'"),
    ("busy..box", r"bad name component"),
    ("busy___box", r"bad name component"),
    ("busybox_", r"bad name component"),
    ("ex_ample.com/app", r"invalid registry 'ex_ample\.com'"),
    ("example.com:port/app", r"invalid registry 'example\.com:port'"),
    ("-example.com/app", r"invalid registry '-example\.com'"),
    ("example.com/", r"no repository name"),
    ("a" * 256, r"name longer than 255"),
]


@pytest.mark.parametrize(("text", "message"), BAD, ids=[b[0][:40] for b in BAD])
def test_invalid(text: str, message: str) -> None:
    with pytest.raises(InvalidReference, match=message):
        Reference.parse(text)


def test_invalid_reference_is_user_input_error() -> None:
    with pytest.raises(InvalidInput) as info:
        Reference.parse("UPPER")
    assert info.value.exit_code == 3


def test_longest_name_accepted() -> None:
    # 255 characters in all: "docker.io/" (10) + "library/" (8) + 237
    ref = Reference.parse("a" * 237)
    assert len(ref.name) == 255


@pytest.mark.parametrize("text", ["busybox\n:latest", "example.com\n/app",
                                  f"busybox:v1\n@{DG}"])
def test_newline_rejected(text: str) -> None:
    with pytest.raises(InvalidReference):
        Reference.parse(text)


@pytest.mark.parametrize("text", ["busybox:lätest", "busybox:٣", "busybox:v1ß"])
def test_non_ascii_tag_rejected(text: str) -> None:
    with pytest.raises(InvalidReference, match="invalid tag"):
        Reference.parse(text)
