"""Content discovery (tags list pagination, catalog) and the referrers API, modelled on
the conformance suite's content-discovery workflow, for sha256 and sha512."""

from __future__ import annotations

import json

import httpx
import pytest
from server_helpers import (
    ALGORITHMS,
    OCI_EMPTY,
    OCI_INDEX,
    OCI_MANIFEST,
    descriptor,
    digest_of,
    error_code,
    make_image,
    push_blob,
    push_image,
    push_manifest,
)

pytestmark = pytest.mark.anyio
REPLICA_PAIR = True      # conftest: each test also runs on two replicas over PostgreSQL
KEY = "org.opencontainers.conformance.test"


async def test_tags_list(client: httpx.AsyncClient) -> None:
    repo = "disc/tags"
    image = make_image(1, n_layers=1)
    await push_image(client, repo, "B", image)
    for tag in ("test3", "test1", "a", "test0", "test2", "Z"):
        assert (await push_manifest(client, repo, tag, image.manifest)).status_code == 201
    r = await client.get(f"/v2/{repo}/tags/list")
    assert r.status_code == 200
    assert r.json() == {"name": repo, "tags": ["B", "Z", "a", "test0", "test1", "test2",
                                               "test3"]}
    assert "link" not in r.headers
    r = await client.get(f"/v2/{repo}/tags/list", params={"n": 3})
    assert r.json()["tags"] == ["B", "Z", "a"]
    assert r.headers["link"] == f'</v2/{repo}/tags/list?n=3&last=a>; rel="next"'
    r = await client.get(r.headers["link"][1:].split(">")[0])
    assert r.json()["tags"] == ["test0", "test1", "test2"]
    r = await client.get(f"/v2/{repo}/tags/list", params={"n": 3, "last": "test2"})
    assert r.json()["tags"] == ["test3"] and "link" not in r.headers
    r = await client.get(f"/v2/{repo}/tags/list", params={"last": "test0"})
    assert r.json()["tags"] == ["test1", "test2", "test3"]
    r = await client.get(f"/v2/{repo}/tags/list", params={"n": 0})
    assert r.json()["tags"] == [] and "link" not in r.headers
    r = await client.get(f"/v2/{repo}/tags/list", params={"n": "-1"})
    assert r.status_code == 400 and error_code(r) == "UNSUPPORTED"
    r = await client.get("/v2/disc/nothing/tags/list")
    assert r.status_code == 404 and error_code(r) == "NAME_UNKNOWN"
    # a repository with blobs but no tags exists, with an empty list
    await push_blob(client, "disc/blobsonly", b"x")
    r = await client.get("/v2/disc/blobsonly/tags/list")
    assert r.status_code == 200 and r.json()["tags"] == []


async def test_catalog(client: httpx.AsyncClient) -> None:
    image = make_image(2, n_layers=1)
    for repo in ("c/b", "c/a", "busybox", "c/c"):
        await push_image(client, repo, "latest", image)
    r = await client.get("/v2/_catalog")
    assert r.json() == {"repositories": ["c/a", "c/b", "c/c", "library/busybox"]}
    r = await client.get("/v2/_catalog", params={"n": 2})
    assert r.json()["repositories"] == ["c/a", "c/b"]
    assert r.headers["link"] == '</v2/_catalog?n=2&last=c%2Fb>; rel="next"'
    r = await client.get("/v2/_catalog", params={"n": 2, "last": "c/b"})
    assert r.json()["repositories"] == ["c/c", "library/busybox"] and "link" not in r.headers
    # the one-component name is Docker's library/ shorthand, both spellings work
    assert (await client.get("/v2/library/busybox/manifests/latest")).status_code == 200


@pytest.mark.parametrize("alg", ALGORITHMS)
async def test_referrers(client: httpx.AsyncClient, alg: str) -> None:
    repo = "disc/refs"
    subject = make_image(3, n_layers=1, algorithm=alg)
    absent = make_image(4, n_layers=1, algorithm=alg)
    blob_a, blob_b, empty = b"NHL Peanut Butter on my NHL bagel", b"NBA Jam croissant", b"{}"
    type_a, type_b = "application/vnd.nhl.peanut.butter.bagel", "application/vnd.nba.jam"
    for b in (empty, blob_a, blob_b):
        await push_blob(client, repo, b, alg)
    subj = descriptor(OCI_MANIFEST, subject.manifest, alg)

    def artifact(config: dict[str, object], layers: list[dict[str, object]],
                 note: str | None, art: str | None = None,
                 subj: dict[str, object] = subj) -> bytes:
        obj: dict[str, object] = {"schemaVersion": 2, "mediaType": OCI_MANIFEST,
                                  "config": config, "layers": layers, "subject": subj}
        if art:
            obj["artifactType"] = art
        if note:
            obj["annotations"] = {KEY: note}
        return json.dumps(obj, indent="\t").encode()

    empty_desc = descriptor(OCI_EMPTY, empty, alg)
    a_cfg = artifact(descriptor(type_a, blob_a, alg), [empty_desc], "config a")
    a_lay = artifact(empty_desc, [descriptor(type_a, blob_a, alg)], "layer a", type_a)
    b_cfg = artifact(descriptor(type_b, blob_b, alg), [empty_desc], "config b")
    b_lay = artifact(empty_desc, [descriptor(type_b, blob_b, alg)], "layer b", type_b)
    c_lay = artifact(empty_desc, [descriptor(type_b, blob_b, alg)], None, type_b,
                     descriptor(OCI_MANIFEST, absent.manifest, alg))
    # referrers pushed before their subject exists (by digest)
    for raw in (a_cfg, a_lay):
        r = await push_manifest(client, repo, digest_of(raw, alg), raw)
        assert r.status_code == 201, r.text
        assert r.headers["oci-subject"] == subj["digest"]
    index = json.dumps({"schemaVersion": 2, "mediaType": OCI_INDEX,
                        "artifactType": "application/vnd.food.stand",
                        "manifests": [descriptor(OCI_MANIFEST, a_cfg, alg),
                                      descriptor(OCI_MANIFEST, a_lay, alg)],
                        "subject": subj, "annotations": {KEY: "index"}}).encode()
    r = await push_manifest(client, repo, digest_of(index, alg), index, OCI_INDEX)
    assert r.status_code == 201 and r.headers["oci-subject"] == subj["digest"]
    await push_image(client, repo, "tagtest0", subject)
    for raw in (b_cfg, b_lay, c_lay):
        r = await push_manifest(client, repo, digest_of(raw, alg), raw)
        assert r.status_code == 201

    r = await client.get(f"/v2/{repo}/referrers/{digest_of(b'hello world', alg)}")
    assert r.status_code == 200 and r.headers["content-type"] == OCI_INDEX
    assert r.json()["manifests"] == []
    r = await client.get(f"/v2/{repo}/referrers/{subj['digest']}")
    found = r.json()["manifests"]
    assert len(found) == 5 and len({m["digest"] for m in found}) == 5
    notes = {m["digest"]: (m.get("artifactType"), m["annotations"][KEY]) for m in found}
    assert notes == {digest_of(a_cfg, alg): (type_a, "config a"),
                     digest_of(a_lay, alg): (type_a, "layer a"),
                     digest_of(b_cfg, alg): (type_b, "config b"),
                     digest_of(b_lay, alg): (type_b, "layer b"),
                     digest_of(index, alg): ("application/vnd.food.stand", "index")}
    assert all(m["size"] > 0 and m["mediaType"] in (OCI_MANIFEST, OCI_INDEX) for m in found)
    r = await client.get(f"/v2/{repo}/referrers/{subj['digest']}",
                         params={"artifactType": type_a})
    assert r.headers["oci-filters-applied"] == "artifactType"
    assert {m["digest"] for m in r.json()["manifests"]} == {digest_of(a_cfg, alg),
                                                             digest_of(a_lay, alg)}
    r = await client.get(f"/v2/{repo}/referrers/{digest_of(absent.manifest, alg)}")
    assert [m["digest"] for m in r.json()["manifests"]] == [digest_of(c_lay, alg)]
    # deleting a referrer takes it out of the list; another repository sees none
    r = await client.delete(f"/v2/{repo}/manifests/{digest_of(b_cfg, alg)}")
    assert r.status_code == 202
    r = await client.get(f"/v2/{repo}/referrers/{subj['digest']}")
    assert len(r.json()["manifests"]) == 4
    r = await client.get(f"/v2/disc/other/referrers/{subj['digest']}")
    assert r.status_code == 200 and r.json()["manifests"] == []
    r = await client.get(f"/v2/{repo}/referrers/sha256:nothex")
    assert r.status_code == 400 and error_code(r) == "DIGEST_INVALID"
