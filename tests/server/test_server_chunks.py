"""``lamina serve`` as a real process serves a blob kept as chunks (store/chunks.py) with
its exact bytes: whole, HEAD, and Range reads across chunk boundaries (RFC 9110 §14)."""

from __future__ import annotations

import hashlib
import random
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from server_helpers import Serve

from lamina_testing import Lamina, store_chunked_image


@pytest.fixture
def served(tmp_path: Path) -> Iterator[tuple[Serve, bytes, str]]:
    rnd = random.Random(7)
    files = [(f"f{i}.bin", rnd.randbytes(6_000)) for i in range(6)]
    image = store_chunked_image(tmp_path / "served", "docker.io/demo/chunked:latest", files,
                                span=1_000)
    srv = Serve(tmp_path / "served", tmp_path / "serve.log").start()
    yield srv, image.layer_bytes, image.layer
    srv.stop()


def test_serve_gives_a_chunked_blob_whole_and_by_range(served: tuple[Serve, bytes, str],
                                                        tmp_path: Path) -> None:
    srv, data, digest = served
    url = f"{srv.url}/v2/demo/chunked/blobs/{digest}"
    with httpx.Client() as c:
        r = c.get(url)
        assert r.status_code == 200 and r.content == data
        assert r.headers["docker-content-digest"] == digest
        assert "sha256:" + hashlib.sha256(r.content).hexdigest() == digest
        head = c.head(url)
        assert head.status_code == 200 and int(head.headers["content-length"]) == len(data)
        size = len(data)
        for start, end in [(0, 0), (999, 1000), (1_500, 7_321), (0, size - 1),
                           (size - 10, size - 1), (size - 5, size + 100)]:
            r = c.get(url, headers={"Range": f"bytes={start}-{end}"})
            last = min(end, size - 1)
            assert r.status_code == 206, (start, end)
            assert r.headers["content-range"] == f"bytes {start}-{last}/{size}"
            assert r.content == data[start:last + 1]
        r = c.get(url, headers={"Range": "bytes=-700"})        # a suffix range
        assert r.status_code == 206 and r.content == data[-700:]
        r = c.get(url, headers={"Range": f"bytes={size}-"})
        assert r.status_code == 416 and r.headers["content-range"] == f"bytes */{size}"
    # lamina's own pull from it: the same image
    dst = Lamina(tmp_path / "dst", tmp_path)
    dst.run("pull", f"{srv.host}/demo/chunked")
    want = Lamina(srv.root, tmp_path).run("inspect", "demo/chunked").json()[0]["Id"]
    assert dst.run("inspect", f"{srv.host}/demo/chunked").json()[0]["Id"] == want
    dst.assert_consistent()
