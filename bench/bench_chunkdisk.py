"""Disk taken by ten variants of a zstd:chunked image: one lamina store that pulled them
all (v1 cold, v2..v10 delta) against the unique compressed content and against what
layer-level sharing keeps (``skopeo copy`` of all ten into one ``oci:`` layout).

    .venv/bin/python bench/bench_chunkdisk.py [--variants N] [--files N] [--mb N]
                                              [--changed N] [--quick]

Untimed set-up: bench_delta's tree (``--files`` files, ~``--mb`` MB, half random, half
text, plus a 1 MiB file); each later variant rewrites ``--changed`` more files of the
previous one (same sizes, new bytes).  Each variant is imported by ``lamina import
--compression zstd:chunked`` and pushed to docker-registry on 127.0.0.1.  Then, one after
the other (times printed for information, alternating per variant):

* lamina: ``lamina pull`` of v1..vN into one empty store;
* skopeo: ``skopeo copy docker://…:vK oci:DIR:vK`` into one layout (blobs shared by digest).

Printed: lamina's store (``lamina df --json`` storage.physical: whole blobs, recipes, each
chunk once; and the blocks ``du`` counts under blobs/, packs/, chunks/, recipes/), the unique
compressed content (each layer blob cut at its TOC's frames, every distinct frame counted
once by its bytes, plus every manifest and config), and the ``oci:`` layout's blobs.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import random
import shutil
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_delta import make_tree, require, start_registry, stop  # noqa: E402
from bench_layer import lamina_cli, run  # noqa: E402
from bench_registry import lamina_env  # noqa: E402 - compiled modules cached, as installed

from lamina.layer.chunkmap import read_toc  # noqa: E402
from lamina.layer.zstdchunked import frame_spans  # noqa: E402

_ACCEPT = "application/vnd.oci.image.manifest.v1+json"


def change_files(root: Path, files: int, count: int, variant: int) -> None:
    rnd = random.Random(1000 + variant)
    for i in rnd.sample(range(files), count):
        path = root / f"d{i // 100:03}" / f"f{i:05}"
        size = path.stat().st_size
        path.write_bytes(rnd.randbytes(size // 2) + b"variant %d " % variant * (size // 20))


def _get(url: str, accept: str | None = None) -> bytes:
    req = urllib.request.Request(url, headers={"Accept": accept} if accept else {})
    with urllib.request.urlopen(req) as resp:
        body: bytes = resp.read()
    return body


def unique_content(registry: str, repo: str, tags: list[str]) -> tuple[int, int, int]:
    """(distinct frame bytes over every layer + manifests + configs, the layers' total
    size, the number of distinct frames) for ``tags``, read from the registry."""
    frames: dict[str, int] = {}
    docs = layers = 0
    base = f"http://{registry}/v2/{repo}"
    for tag in tags:
        manifest = _get(f"{base}/manifests/{tag}", _ACCEPT)
        doc = json.loads(manifest)
        docs += len(manifest) + int(doc["config"]["size"])
        for desc in doc["layers"]:
            blob = _get(f"{base}/blobs/{desc['digest']}")
            layers += len(blob)
            toc = read_toc(lambda off, n, blob=blob: blob[off:off + n],
                           desc.get("annotations", {}), len(blob))
            if toc is None:
                raise SystemExit(f"{tag}: layer {desc['digest']} is not zstd:chunked")
            for off, n in frame_spans(toc, len(blob)):
                frames[hashlib.sha256(blob[off:off + n]).hexdigest()] = n
    return sum(frames.values()) + docs, layers, len(frames)


def du(paths: list[Path]) -> tuple[int, int]:
    """(allocated bytes, apparent bytes) of the files under ``paths``, each inode once."""
    seen: set[tuple[int, int]] = set()
    blocks = size = 0
    for top in paths:
        for dirpath, _, names in os.walk(top):
            for name in names:
                st = os.lstat(os.path.join(dirpath, name))
                if (st.st_dev, st.st_ino) in seen:
                    continue
                seen.add((st.st_dev, st.st_ino))
                blocks += st.st_blocks * 512
                size += st.st_size
    return blocks, size


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--variants", type=int, default=10)
    ap.add_argument("--files", type=int, default=2000)
    ap.add_argument("--mb", type=int, default=100)
    ap.add_argument("--changed", type=int, default=5, help="files rewritten per variant")
    ap.add_argument("--quick", action="store_true", help="4 variants of a small tree")
    args = ap.parse_args()
    if args.quick:
        args.variants, args.files, args.mb = 4, 500, 20
    require("skopeo", "docker-registry")
    lamina = lamina_cli()
    work = Path(tempfile.mkdtemp(prefix="lamina-bench-chunkdisk-", dir="/var/tmp"))
    proc = None
    try:
        proc, registry, _ = start_registry(work)
        builder = lamina_env(work / "builder")
        tree = work / "tree"
        make_tree(tree, args.files, args.mb, changed=False)
        tags = [f"v{k}" for k in range(1, args.variants + 1)]
        for k, tag in enumerate(tags, 1):
            if k > 1:
                change_files(tree, args.files, args.changed, k)
            run([lamina, "import", "--compression", "zstd:chunked", f"bench/disk:{tag}",
                 str(tree)], env=builder)
            run([lamina, "push", f"bench/disk:{tag}", f"{registry}/bench/disk:{tag}"],
                env=builder)
        shutil.rmtree(tree)
        shutil.rmtree(work / "builder")
        store = work / "store"
        layout = work / "layout"
        env = lamina_env(store)
        seconds = {"lamina": 0.0, "skopeo": 0.0}
        for k, tag in enumerate(tags):
            for tool in ("lamina", "skopeo")[:: 1 if k % 2 == 0 else -1]:
                cmd = ([lamina, "pull", f"{registry}/bench/disk:{tag}"] if tool == "lamina"
                       else ["skopeo", "copy", "--src-tls-verify=false",
                             f"docker://{registry}/bench/disk:{tag}", f"oci:{layout}:{tag}"])
                start = time.perf_counter()
                run(cmd, env=env if tool == "lamina" else None)
                seconds[tool] += time.perf_counter() - start
        df = json.loads(run([lamina, "df", "--json"], env=env))["storage"]
        lam_blocks, lam_size = du([store / "blobs", store / "packs", store / "chunks",
                                   store / "recipes"])
        oci_blocks, oci_size = du([layout / "blobs"])
        unique, layers, frames = unique_content(registry, "bench/disk", tags)
        mb = 1e6
        print(f"{args.variants} variants: {args.files} files, ~{args.mb} MB, "
              f"{args.changed} files rewritten per variant; zstd:chunked layers of "
              f"{layers / args.variants / mb:.1f} MB on average")
        print(f"  unique compressed content: {unique / mb:8.1f} MB "
              f"({frames} distinct frames + manifests and configs)")
        print(f"  lamina store (df physical): {df['physical'] / mb:8.1f} MB "
              f"= {df['physical'] / unique:.3f}\u00d7 unique; du {lam_blocks / mb:.1f} MB "
              f"allocated = {lam_blocks / unique:.3f}\u00d7 ({df['chunks']} chunks, "
              f"logical {df['logical'] / mb:.1f} MB); apparent {lam_size / mb:.1f} MB")
        print(f"  skopeo oci: layout blobs:  {oci_size / mb:8.1f} MB "
              f"= {oci_size / unique:.3f}\u00d7 unique; du {oci_blocks / mb:.1f} MB allocated "
              f"(layer-level sharing: {oci_size / df['physical']:.2f}\u00d7 lamina's store)")
        print(f"  pulling all {args.variants}: lamina {seconds['lamina']:.2f} s, "
              f"skopeo {seconds['skopeo']:.2f} s (for information: lamina's v2..vN are delta "
              f"pulls, skopeo's full)")
    finally:
        stop(proc, work)
    return 0


if __name__ == "__main__":
    sys.exit(main())
