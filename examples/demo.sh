#!/bin/sh
# The seed story, end to end (make demo):
#   image A: OS → web server installed → server config → index.html "A"
#   image B: OS → web server installed → server config → index.html "B"
#            └──────────── 3 shared layers ───────────┘   1 layer each
# The images are built from examples/Containerfile.a and .b on a busybox base that
# `lamina import` makes from the host's busybox-static.
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

step "The base: busybox, imported from the host's busybox-static (one layer)"
examples/seed/make-snapshots.sh "$work/snapshots" >/dev/null
( cd "$work/snapshots" && "$lamina_abs" import busybox os )

step "lamina build -f examples/Containerfile.a -t demo/a examples"
cat examples/Containerfile.a
$LAMINA build -f examples/Containerfile.a -t demo/a examples
step "lamina build -f examples/Containerfile.b -t demo/b examples  (only index.html differs)"
$LAMINA build -f examples/Containerfile.b -t demo/b examples

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
print(f"  {sum(x == y for x, y in zip(a, b))} shared layers; 5 distinct layers on disk for "
      f"2 images of 4 layers (the store holds {len(blobs)} blobs with configs and manifests)")
PYEOF

step "lamina diff demo/a demo/b, and the picture: lamina graph -o seed.svg"
$LAMINA diff demo/a demo/b
$LAMINA graph busybox demo/a demo/b -o "$work/seed.svg"
echo "  wrote $work/seed.svg (open it in a browser)"

step "lamina serve: a registry on 127.0.0.1 over its own store; push A and B to it"
port=$($PY -c "import socket; s=socket.socket(); s.bind(('127.0.0.1', 0)); print(s.getsockname()[1])")
LAMINA_ROOT="$work/registry-store" $LAMINA serve --addr 127.0.0.1:$port --no-access-log \
    > "$work/serve.log" 2>&1 &
registry_pid=$!
trap 'kill $registry_pid 2>/dev/null || true' EXIT
for _ in $(seq 100); do
    $PY -c "import urllib.request; urllib.request.urlopen('http://127.0.0.1:$port/v2/', timeout=1)" 2>/dev/null && break
    sleep 0.1
done
reg=127.0.0.1:$port
$LAMINA tag demo/a $reg/demo/a
$LAMINA tag demo/b $reg/demo/b
$LAMINA push $reg/demo/a
$LAMINA push $reg/demo/b      # B's shared layers are mounted, not sent again
echo "  (while the demo runs, http://$reg/ui/ shows the repositories and their stacks)"

step "Pull both into a second, empty store: B's three shared layers 'Already exists'"
LAMINA_ROOT="$work/store2" $LAMINA pull --jobs 1 $reg/demo/a
LAMINA_ROOT="$work/store2" $LAMINA pull --jobs 1 $reg/demo/b
LAMINA_ROOT="$work/store2" $LAMINA images

step "lamina save demo/a demo/b -o seed.tar (a docker save archive), load into a third store"
$LAMINA save demo/a demo/b -o "$work/seed.tar"
LAMINA_ROOT="$work/store3" $LAMINA load "$work/seed.tar"

step "lamina save --format oci, then umoci unpacks what lamina wrote"
$LAMINA save demo/a -o "$work/layout" --format oci
if command -v umoci >/dev/null; then
    umoci unpack --image "$work/layout:latest" "$work/bundle" >/dev/null
    echo "  umoci: $(cat "$work/bundle/rootfs/var/www/html/index.html")"
fi

step "lamina run -d -p: demo/a's CMD (busybox httpd on 8080) in a container, its port published on 127.0.0.1"
web=$($PY -c "import socket; s=socket.socket(); s.bind(('127.0.0.1', 0)); print(s.getsockname()[1])")
$LAMINA run -d --rm --name demo-web -p 127.0.0.1:$web:8080 demo/a >/dev/null
trap '$LAMINA stop -t 1 demo-web >/dev/null 2>&1 || true; kill $registry_pid 2>/dev/null || true' EXIT
page=""
for _ in 1 2 3 4 5 6 7 8 9 10; do
    page=$($PY -c "import urllib.request; print(urllib.request.urlopen('http://127.0.0.1:$web/', timeout=1).read().decode())" 2>/dev/null) && break
    sleep 0.3
done
echo "  GET http://127.0.0.1:$web/ -> $page"
$LAMINA ps
$LAMINA stop demo-web >/dev/null
trap 'kill $registry_pid 2>/dev/null || true' EXIT
[ -n "$page" ] || { echo "demo: the page did not load" >&2; exit 1; }

step "lamina run --commit: a change saved as a new layer on top of demo/a"
$LAMINA run --commit demo/a:edited demo/a /bin/sh -c 'echo "<p>edited in a container</p>" >> /var/www/html/index.html'
$LAMINA history demo/a:edited | head -3
step "lamina fsck"
$LAMINA fsck
