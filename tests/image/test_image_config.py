"""Image configs: diff_ids, history, platform, and chain ids per image-spec config.md."""

from __future__ import annotations

import hashlib
import json
from typing import Any

import pytest

from lamina.digest import Digest
from lamina.errors import InvalidManifest
from lamina.image.config import History, build_config, chain_ids, parse_config
from lamina.image.manifest import Platform

D = [f"sha256:{hashlib.sha256(f'layer {i}'.encode()).hexdigest()}" for i in range(4)]


def config_doc(**changes: Any) -> dict[str, Any]:
    doc: dict[str, Any] = {
        "created": "2023-11-14T22:13:20Z",
        "architecture": "arm",
        "variant": "v7",
        "os": "linux",
        "config": {"Env": ["PATH=/bin"], "Cmd": ["/bin/sh"], "WorkingDir": "/srv"},
        "rootfs": {"type": "layers", "diff_ids": D[:3]},
        "history": [
            {"created": "2023-11-14T22:13:20Z", "created_by": "ADD os.tar /"},
            {"created_by": "ENV PATH=/bin", "empty_layer": True},
            {"created_by": "RUN install httpd", "author": "me", "comment": "buildkit"},
            {"created_by": "WORKDIR /srv", "empty_layer": True},
            {"created_by": "COPY site /srv"},
        ],
    }
    for k, v in changes.items():
        if v is None:
            doc.pop(k, None)
        else:
            doc[k] = v
    return doc


def test_parse_config() -> None:
    raw = json.dumps(config_doc(), indent=2).encode()
    cfg = parse_config(raw)
    assert cfg.raw is raw
    assert cfg.digest == Digest("sha256", hashlib.sha256(raw).hexdigest())
    assert [str(d) for d in cfg.diff_ids] == D[:3]
    assert cfg.platform == Platform("arm", "linux", "v7")
    assert cfg.created == "2023-11-14T22:13:20Z"
    assert [h.empty_layer for h in cfg.history] == [False, True, False, True, False]
    assert cfg.history[2] == History(None, "RUN install httpd", "me", "buildkit", False)
    # Non-empty history entries line up with layers.
    assert [h.created_by if h else None for h in cfg.layer_history()] == [
        "ADD os.tar /", "RUN install httpd", "COPY site /srv"]
    assert cfg.container_config["Cmd"] == ["/bin/sh"]


def test_container_config_is_a_copy() -> None:
    cfg = parse_config(json.dumps(config_doc()).encode())
    cfg.container_config["Cmd"].append("-x")
    assert cfg.container_config["Cmd"] == ["/bin/sh"]


def test_short_or_missing_history_pads_with_none() -> None:
    cfg = parse_config(json.dumps(config_doc(history=None)).encode())
    assert cfg.history == ()
    assert cfg.layer_history() == [None, None, None]
    cfg = parse_config(json.dumps(config_doc(history=[{"created_by": "one"}])).encode())
    assert [h.created_by if h else None for h in cfg.layer_history()] == ["one", None, None]


def test_docker_style_config_without_variant() -> None:
    doc = config_doc(variant=None, architecture="amd64", container_config={"Hostname": "x"},
                     docker_version="24.0.7")
    cfg = parse_config(json.dumps(doc).encode())
    assert cfg.platform == Platform("amd64", "linux", None)


BAD: list[tuple[str, dict[str, Any] | bytes, str]] = [
    ("no rootfs", config_doc(rootfs=None), r"^image config: rootfs\.type must be 'layers'$"),
    ("rootfs wrong type", config_doc(rootfs={"type": "overlay", "diff_ids": []}),
     r"rootfs\.type must be 'layers'"),
    ("rootfs not object", config_doc(rootfs=["layers"]), r"rootfs\.type must be 'layers'"),
    ("diff_ids missing", config_doc(rootfs={"type": "layers"}),
     r"^image config: rootfs\.diff_ids must be a list$"),
    ("bad diff_id", config_doc(rootfs={"type": "layers", "diff_ids": ["sha256:beef"]}),
     r"^image config: rootfs\.diff_ids: invalid sha256 digest 'sha256:beef'$"),
    ("history not list", config_doc(history={"a": 1}), r"^image config: history must be a list$"),
    ("history entry", config_doc(history=["ADD"]),
     r"^image config: history\[0\] must be an object$"),
    ("no os", config_doc(os=None), r"^image config: needs string 'architecture' and 'os'$"),
    ("no arch", config_doc(architecture=None), r"needs string 'architecture' and 'os'"),
    ("not object", b"[]", r"^image config is not a JSON object$"),
    ("not json", b"{", r"^image config is not valid JSON"),
]


@pytest.mark.parametrize(("doc", "message"), [b[1:] for b in BAD], ids=[b[0] for b in BAD])
def test_invalid_config(doc: dict[str, Any] | bytes, message: str) -> None:
    raw = doc if isinstance(doc, bytes) else json.dumps(doc).encode()
    with pytest.raises(InvalidManifest, match=message):
        parse_config(raw)


def test_build_config_round_trips_and_is_deterministic() -> None:
    ids = [Digest.parse(d) for d in D[:2]]
    hist = [History(created="2023-11-14T22:13:20Z", created_by="a"),
            History(created_by="ENV X=1", empty_layer=True),
            History(created_by="b", comment="c")]
    plat = Platform("arm64", "linux", "v8")
    one = build_config(ids, hist, plat, created="2023-11-14T22:13:20Z",
                       container_config={"Env": ["X=1"]})
    two = build_config(ids, hist, plat, created="2023-11-14T22:13:20Z",
                       container_config={"Env": ["X=1"]})
    assert one.raw == two.raw
    back = parse_config(one.raw)
    assert back.diff_ids == tuple(ids)
    assert back.history == tuple(hist)
    assert back.platform == plat
    assert back.digest == one.digest == Digest.from_bytes(one.raw)
    assert json.loads(one.raw)["rootfs"] == {"type": "layers", "diff_ids": D[:2]}


def _chain_by_hand(diff_ids: list[str]) -> list[str]:
    # image-spec config.md, "Layer ChainID":
    #   ChainID(L0) = DiffID(L0)
    #   ChainID(L0|...|Ln) = Digest(ChainID(L0|...|Ln-1) + " " + DiffID(Ln))
    out = [diff_ids[0]]
    for d in diff_ids[1:]:
        out.append("sha256:" + hashlib.sha256(f"{out[-1]} {d}".encode()).hexdigest())
    return out


def test_chain_ids_match_the_spec() -> None:
    got = [str(c) for c in chain_ids([Digest.parse(d) for d in D])]
    assert got == _chain_by_hand(D)
    assert got[0] == D[0]
    assert len(set(got)) == 4


def test_chain_ids_known_value() -> None:
    # Two layers computed once by hand: sha256("sha256:<a> sha256:<b>").
    a, b = "sha256:" + "a" * 64, "sha256:" + "b" * 64
    expected = hashlib.sha256(("sha256:" + "a" * 64 + " sha256:" + "b" * 64).encode()).hexdigest()
    assert [str(c) for c in chain_ids([Digest.parse(a), Digest.parse(b)])] == [
        a, "sha256:" + expected]
    assert chain_ids([]) == []


def test_chain_ids_name_stacks_not_layers() -> None:
    x, y = Digest.parse(D[0]), Digest.parse(D[1])
    # Same top layer on a different base: a different chain id.
    assert chain_ids([x, y])[1] != chain_ids([y, y])[1]
    # Same first layers: the same prefix of chain ids (what snapshots are shared by).
    assert chain_ids([x, y, x])[:2] == chain_ids([x, y, y])[:2]
    cfg = parse_config(json.dumps(config_doc()).encode())
    assert [str(c) for c in cfg.chain_ids()] == _chain_by_hand(D[:3])
