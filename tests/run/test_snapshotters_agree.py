"""The overlay and walk snapshotters write byte-identical layers for the same RUN.

Each scenario runs one command over demo/a with each snapshotter and writes the layer
(uncompressed, under SOURCE_DATE_EPOCH): the diff_ids must be equal, and the entries
what the command changed, no more (no-op copy-ups leave no trace).
"""

from __future__ import annotations

import io
import os
import tarfile

import pytest

from lamina.layer import LayerOptions, write_changeset
from lamina.run.rootfs import open_rootfs
from lamina.run.sandbox import ProcessSpec, run_process
from lamina.store.store import Store
from lamina.transport.local import StoreTransport
from lamina.transport.resolve import resolve_image
from lamina_testing import EPOCH, Lamina, need_root

BB = "/bin/busybox"
# name -> (script, user, expected tar entry names or None to skip that check)
SCENARIOS: dict[str, tuple[str, str, list[str] | None]] = {
    "nothing": (":", "0", []),
    "create": ("echo new > /new; mkdir -p /a/b/c; echo x > /a/b/c/f", "0",
               ["a/", "a/b/", "a/b/c/", "a/b/c/f", "new"]),
    "modify": ("echo more >> /etc/passwd", "0", ["etc/", "etc/passwd"]),
    "delete": ("rm /etc/hostname; rm -r /var/www/html", "0",
               ["etc/", "etc/.wh.hostname", "var/", "var/www/", "var/www/.wh.html"]),
    "chmod": (f"{BB} chmod 600 /etc/httpd.conf; {BB} chmod 700 /var/www", "0",
              ["etc/", "etc/httpd.conf", "var/", "var/www/"]),
    "chown": (f"{BB} chown 33:33 /etc/group", "0", ["etc/", "etc/group"]),
    # Opened for writing or touched, left identical: no change under SOURCE_DATE_EPOCH.
    "touch-unchanged": (f"{BB} touch /etc/passwd /var/www/html/index.html; "
                        "cat /etc/group > /tmp/g; cat /tmp/g > /etc/group; rm /tmp/g; "
                        f"{BB} chmod 644 /etc/httpd.conf", "0", []),
    # Same size, mtime put back to the same whole second: only the bytes tell (#10.1).
    "rewrite-same-size-and-time": (f"{BB} cp -p /etc/hostname /tmp/ref; "
                                   "echo LAMINA-SEED > /etc/hostname; "
                                   f"{BB} touch -r /tmp/ref /etc/hostname; rm /tmp/ref", "0",
                                   ["etc/", "etc/hostname"]),
    # Deeper than Python's recursion limit: both walks use a stack (#10.4).
    "deep": ("d=/deep; i=0; while [ $i -lt 1200 ]; do d=$d/d; i=$((i+1)); done; "
             "mkdir -p $d; echo x > $d/f", "0", None),
    "opaque": ("rm -rf /var/www; mkdir -p /var/www/html; echo n > /var/www/html/index.html",
               "0", ["var/", "var/www/", "var/www/html/", "var/www/html/index.html"]),
    "recreated-same": ("rm -rf /var/www/html; mkdir /var/www/html", "0", None),
    "rename-dir": ("mkdir /srv; mv /var/www /srv/www", "0", None),
    "replace-dir-with-file": ("rm -r /var/www/html; echo f > /var/www/html", "0",
                              ["var/", "var/www/", "var/www/html"]),
    "replace-file-with-dir": ("rm /etc/hostname; mkdir /etc/hostname; echo i > /etc/hostname/i",
                              "0", ["etc/", "etc/hostname/", "etc/hostname/i"]),
    "links": ("ln /etc/passwd /etc/passwd.hard; ln -s ../etc/group /root/group.lnk; "
              f"{BB} mkfifo /tmp/fifo", "0", None),
    "as-www-data": ("echo w > /tmp/w; mkdir /tmp/wd", "www-data", ["tmp/", "tmp/w", "tmp/wd/"]),
}


@pytest.fixture(autouse=True)
def _root() -> None:
    need_root()


def _layer(store: Store, mode: str, script: str, user: str) -> tuple[str, list[str]]:
    source = StoreTransport(store)
    image = resolve_image(source, source.resolve("demo/a"))
    with open_rootfs(store, source, image, mode) as rootfs:  # type: ignore[arg-type]
        with open(os.devnull, "wb") as null:
            code = run_process(ProcessSpec(rootfs=rootfs.path, argv=["sh", "-c", script],
                                           env={}, user=user),
                               stdin=null.fileno(), stdout=null.fileno())
        assert code == 0, (mode, script)
        changes = rootfs.changes(int(EPOCH))
        out = io.BytesIO()
        info = write_changeset(changes, out, LayerOptions(compression="none",
                                                          source_date_epoch=int(EPOCH)))
    with tarfile.open(fileobj=io.BytesIO(out.getvalue())) as tar:
        names = [m.name + ("/" if m.isdir() else "") for m in tar]
    return str(info.diff_id), names


@pytest.mark.parametrize("scenario", sorted(SCENARIOS))
def test_overlay_and_walk_write_the_same_layer(seeded: Lamina, scenario: str) -> None:
    script, user, expected = SCENARIOS[scenario]
    with Store(seeded.root) as store:
        overlay = _layer(store, "overlay", script, user)
        walk = _layer(store, "walk", script, user)
    assert overlay == walk
    if expected is not None:
        assert overlay[1] == expected


def test_rename_and_links_are_full_entries(seeded: Lamina) -> None:
    """redirect_dir=off: a renamed directory is a plain copy plus a whiteout; a hard
    link made to a lower file carries both paths."""
    with Store(seeded.root) as store:
        _, names = _layer(store, "overlay", SCENARIOS["rename-dir"][0], "0")
        assert names == ["srv/", "srv/www/", "srv/www/html/", "srv/www/html/index.html",
                         "var/", "var/.wh.www"]
        _, names = _layer(store, "overlay", SCENARIOS["links"][0], "0")
        assert names == ["etc/", "etc/passwd", "etc/passwd.hard", "root/", "root/group.lnk",
                         "tmp/", "tmp/fifo"]


def test_changeset_of_an_opaque_directory_lists_each_deletion(seeded: Lamina) -> None:
    """A directory removed and made again is an opaque dir in the upper layer; the layer
    says it the way the tree walk does: one whiteout per lower entry not made again."""
    with Store(seeded.root) as store:
        diff_id, names = _layer(store, "overlay", SCENARIOS["recreated-same"][0], "0")
    assert names == ["var/", "var/www/", "var/www/html/", "var/www/html/.wh.index.html"]
    assert diff_id
