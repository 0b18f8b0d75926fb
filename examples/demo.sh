#!/bin/sh
# The seed story, end to end (make demo):
#   image A: OS → web server installed → server config → index.html "A"
#   image B: OS → web server installed → server config → index.html "B"
#            └──────────── 3 shared layers ───────────┘   1 layer each
# Until the builder lands, the images are made with `lamina import` from successive
# snapshots of one root filesystem (examples/seed/make-snapshots.sh).
set -eu
cd "$(dirname "$0")/.."
LAMINA=${LAMINA:-.venv/bin/lamina}
PY=${PY:-.venv/bin/python}
lamina_abs=$(cd "$(dirname "$LAMINA")" && pwd)/$(basename "$LAMINA")
work=$(pwd)/${DEMO_DIR:-.demo}
rm -rf "$work"; mkdir -p "$work"
export LAMINA_ROOT="$work/store"
export SOURCE_DATE_EPOCH=1700000000     # reproducible: same digests on every machine

step() { printf '\n\033[1m== %s\033[0m\n' "$*"; }

step "Snapshots of one root: os → webserver → config → site-a / site-b"
examples/seed/make-snapshots.sh "$work/snapshots"
ls "$work/snapshots"

step "lamina import demo/a (each layer holds only what changed since the snapshot before)"
( cd "$work/snapshots" && "$lamina_abs" import demo/a os webserver config site-a )
step "lamina import demo/b (same first three snapshots)"
( cd "$work/snapshots" && "$lamina_abs" import demo/b os webserver config site-b )

step "lamina images"
$LAMINA images

step "lamina history demo/a"
$LAMINA history demo/a
step "lamina history demo/b"
$LAMINA history demo/b

step "Shared layers: stored once"
$LAMINA inspect demo/a > "$work/a.json"
$LAMINA inspect demo/b > "$work/b.json"
$PY - "$work/a.json" "$work/b.json" "$LAMINA_ROOT" <<'PYEOF'
import json, os, sys
a = [l["digest"] for l in json.load(open(sys.argv[1]))[0]["Manifest"]["layers"]]
b = [l["digest"] for l in json.load(open(sys.argv[2]))[0]["Manifest"]["layers"]]
for i, (x, y) in enumerate(zip(a, b), 1):
    print(f"  layer {i}: A {x[7:19]}  B {y[7:19]}  {'shared' if x == y else 'differs'}")
blobs = os.listdir(os.path.join(sys.argv[3], "blobs", "sha256"))
print(f"  {sum(x == y for x, y in zip(a, b))} shared layers; the store holds {len(blobs)} blobs "
      f"for 2 images of 4 layers (each layer once, + 2 configs + 2 manifests)")
PYEOF

step "lamina save demo/a demo/b -o seed.tar (a docker save archive), load into a second, empty store"
$LAMINA save demo/a demo/b -o "$work/seed.tar"
LAMINA_ROOT="$work/store2" $LAMINA load "$work/seed.tar"
LAMINA_ROOT="$work/store2" $LAMINA images

step "lamina save --format oci, then umoci unpacks what lamina wrote"
$LAMINA save demo/a -o "$work/layout" --format oci
if command -v umoci >/dev/null; then
    umoci unpack --image "$work/layout:latest" "$work/bundle" >/dev/null
    echo "  umoci: $(cat "$work/bundle/rootfs/var/www/html/index.html")"
fi

step "lamina unpack demo/a, and its page"
$LAMINA unpack demo/a "$work/rootfs-a"
cat "$work/rootfs-a/var/www/html/index.html"
step "lamina fsck"
$LAMINA fsck
