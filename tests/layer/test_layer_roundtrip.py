"""apply(diff(a, b)) onto a copy of a gives b, entry by entry, for generated trees."""

from __future__ import annotations

import os
import shutil
import stat
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from layer_helpers import IS_ROOT, apply_bytes, layer_bytes, snapshot

from lamina.layer import ApplyOptions, LayerOptions, diff_trees, iter_tar_entries

NAMES = ["a", "b", "c", "dir", "f.txt", "é", "x" * 120]
FILE_MODES = [0o644, 0o755, 0o600, 0o4755, 0o2755, 0o444]
DIR_MODES = [0o755, 0o700, 0o1777, 0o2775]
IDS = [0, 1000, 65534] if IS_ROOT else [os.getuid()]
MTIMES = st.integers(min_value=0, max_value=2_000_000_000)


@dataclass
class File:
    content: bytes
    mode: int
    mtime: int
    owner: int
    xattr: bytes | None = None
    group: int | None = None  # files of one group are hard links of each other


@dataclass
class Dir:
    mode: int
    mtime: int
    owner: int
    children: dict[str, Node] = field(default_factory=dict)


@dataclass
class Symlink:
    target: str
    mtime: int


@dataclass
class Fifo:
    mode: int
    mtime: int


Node = File | Dir | Symlink | Fifo

files = st.builds(
    File,
    st.binary(max_size=700),
    st.sampled_from(FILE_MODES),
    MTIMES,
    st.sampled_from(IDS),
    st.none() | st.binary(min_size=1, max_size=20),
    st.none() | st.integers(0, 2),
)
leaves = st.one_of(
    files,
    files,
    st.builds(
        Symlink, st.sampled_from(["a", "../b", "/etc/passwd", "dir/f.txt", "nowhere"]), MTIMES
    ),
    st.builds(Fifo, st.sampled_from([0o644, 0o600]), MTIMES),
)


def dirs(children: st.SearchStrategy[Node]) -> st.SearchStrategy[Dir]:
    return st.builds(
        Dir,
        st.sampled_from(DIR_MODES),
        MTIMES,
        st.sampled_from(IDS),
        st.dictionaries(st.sampled_from(NAMES), children, max_size=4),
    )


nodes = st.recursive(leaves, dirs, max_leaves=12)
roots = dirs(nodes)


@st.composite
def mutated(draw: st.DrawFn, node: Node, root: bool = False) -> Node | None:
    """``node`` kept, deleted, replaced, or (for directories) changed inside."""
    choices = ["keep", "touch"] if root else ["keep", "keep", "keep", "delete", "replace", "touch"]
    choice = draw(st.sampled_from(choices))
    if choice == "delete":
        return None
    if choice == "replace":
        return draw(nodes)
    if isinstance(node, Dir):
        children: dict[str, Node] = {}
        for name, child in node.children.items():
            new = draw(mutated(child))
            if new is not None:
                children[name] = new
        for name, child in draw(st.dictionaries(st.sampled_from(NAMES), nodes, max_size=2)).items():
            children.setdefault(name, child)
        mode, mtime = node.mode, node.mtime
        if choice == "touch":
            # A directory's own mtime is not a change (see changes.py): change its mode
            # with it, so that the expectation is well defined.
            mode, mtime = draw(st.sampled_from(DIR_MODES)), draw(MTIMES)
        return Dir(mode, mtime, node.owner, children)
    if choice == "touch" and isinstance(node, File):
        return File(
            draw(st.binary(max_size=300)),
            node.mode,
            draw(MTIMES),
            node.owner,
            node.xattr,
            node.group,
        )
    return node


def materialize(root: Path, tree: Dir) -> None:
    """Create ``tree`` at ``root`` (which exists), deterministically."""
    firsts: dict[int, str] = {}
    dir_times: list[tuple[str, Dir]] = []

    def make(path: str, node: Node) -> None:
        if isinstance(node, Dir):
            os.mkdir(path)
            fill(path, node)
        elif isinstance(node, File):
            if node.group is not None and node.group in firsts:
                os.link(firsts[node.group], path)
                return
            with open(path, "wb") as f:
                f.write(node.content)
            if IS_ROOT:
                os.chown(path, node.owner, node.owner)
            os.chmod(path, node.mode)
            if node.xattr is not None:
                os.setxattr(path, "user.lamina", node.xattr)
            os.utime(path, (node.mtime, node.mtime))
            if node.group is not None:
                firsts[node.group] = path
        elif isinstance(node, Symlink):
            os.symlink(node.target, path)
            os.utime(path, (node.mtime, node.mtime), follow_symlinks=False)
        else:
            os.mkfifo(path)
            os.chmod(path, node.mode)
            os.utime(path, (node.mtime, node.mtime))

    def fill(path: str, d: Dir) -> None:
        for name in sorted(d.children):
            make(os.path.join(path, name), d.children[name])
        dir_times.append((path, d))

    fill(str(root), tree)
    for path, d in dir_times:  # children first: fill() appends after recursing
        if path != str(root):
            if IS_ROOT:
                os.chown(path, d.owner, d.owner)
            os.chmod(path, d.mode)
            os.utime(path, (d.mtime, d.mtime))


def link_groups(root: Path, paths: list[str]) -> set[frozenset[str]]:
    by_inode: dict[int, set[str]] = {}
    for rel in paths:
        st_ = os.lstat(root / rel)
        if stat.S_ISREG(st_.st_mode):
            by_inode.setdefault(st_.st_ino, set()).add(rel)
    return {frozenset(v) for v in by_inode.values() if len(v) > 1}


@st.composite
def tree_pairs(draw: st.DrawFn) -> tuple[Dir, Dir]:
    a = draw(roots)
    b = draw(mutated(a, root=True))
    assert isinstance(b, Dir)
    return a, b


@settings(
    max_examples=int(os.environ.get("LAMINA_HYPOTHESIS_EXAMPLES", "80")),
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
@given(pair=tree_pairs(), compression=st.sampled_from(["gzip", "zstd", "none"]))
def test_apply_of_diff_reproduces_upper(pair: tuple[Dir, Dir], compression: str) -> None:
    a_spec, b_spec = pair
    # tmpfs: ext4 here creates files slowly after deletions (bench/README.md).
    with tempfile.TemporaryDirectory(dir="/dev/shm") as tmp:
        base = Path(tmp)
        a, b, target = base / "a", base / "b", base / "target"
        for p in (a, b, target):
            p.mkdir()
        materialize(a, a_spec)
        materialize(b, b_spec)
        materialize(target, a_spec)  # a copy of a, hard links included

        cs = diff_trees(a, b)
        data, info = layer_bytes(cs, LayerOptions(compression=compression))  # type: ignore[arg-type]
        result = apply_bytes(data, target, expected_diff_id=info.diff_id)

        assert result.diff_id == info.diff_id
        assert result.entries == info.entries
        # Directory mtimes are not a change on their own (changes.py): a directory
        # outside the layer keeps the lower's mtime.
        expected = snapshot(b)
        lower = snapshot(a)
        in_layer = {c.path for c in cs.changes if c.stat is not None}
        for rel, entry in expected.items():
            if entry[0] == "d" and rel not in in_layer:
                expected[rel] = entry[:3] + lower[rel][3:4] + entry[4:]
        assert snapshot(target) == expected
        # Hard links among the entries of the layer survive as hard links.
        assert link_groups(target, sorted(in_layer)) == link_groups(b, sorted(in_layer))
        shutil.rmtree(base / "a")


def test_everything_kind_of_entry_round_trips(tmp_path: Path) -> None:
    """One fixed tree with each kind of entry, written whole and applied to an empty dir."""
    src = tmp_path / "src"
    src.mkdir()
    (src / "bin").mkdir(mode=0o755)
    (src / "bin" / "su").write_bytes(b"\x7fELF setuid")
    os.chmod(src / "bin" / "su", 0o4755)
    (src / "bin" / "wall").write_bytes(b"setgid")
    os.chmod(src / "bin" / "wall", 0o2755)
    (src / "tmp").mkdir()
    os.chmod(src / "tmp", 0o1777)
    os.link(src / "bin" / "su", src / "bin" / "su-again")
    os.symlink("bin/su", src / "su-link")
    os.symlink("/abs/target/" + "t" * 150, src / "long-link")
    os.mkfifo(src / "fifo")
    deep = src / ("d" * 90) / ("e" * 90) / ("f" * 90)
    deep.mkdir(parents=True)
    (deep / ("g" * 99)).write_text("deep")
    os.setxattr(src / "bin" / "wall", "user.note", b"\x00binary\xff")
    if IS_ROOT:
        os.chown(src / "bin" / "wall", 1234, 2_500_000)  # gid needs a PAX record
        os.mknod(src / "null", stat.S_IFCHR | 0o666, os.makedev(1, 3))
        # security.capability: a v2 vfs_cap_data granting cap_net_raw (bit 13).
        cap = (0x02000001).to_bytes(4, "little") + (1 << 13).to_bytes(4, "little") + bytes(12)
        os.setxattr(src / "bin" / "su", "security.capability", cap)
    for p in [deep.parent.parent, deep.parent, deep]:
        os.utime(p, (1_500_000_000, 1_500_000_000))

    data, info = layer_bytes(diff_trees(None, src))
    out = tmp_path / "out"
    applied = apply_bytes(data, out, expected_diff_id=info.diff_id)
    assert applied.entries == info.entries
    assert snapshot(out) == snapshot(src)
    assert os.stat(out / "bin" / "su").st_ino == os.stat(out / "bin" / "su-again").st_ino
    types = {e.name: e.type for e in iter_tar_entries(__import__("io").BytesIO(data))}
    assert types["bin/su-again"] == "1"  # the second path of the inode is a hard link


def test_devices_skipped_and_owners_kept_when_asked_not_to(tmp_path: Path) -> None:
    src = tmp_path / "src"
    src.mkdir()
    (src / "f").write_text("x")
    if IS_ROOT:
        os.mknod(src / "null", stat.S_IFCHR | 0o666, os.makedev(1, 3))
        os.chown(src / "f", 4321, 4321)
    data, _ = layer_bytes(diff_trees(None, src))
    out = tmp_path / "out"
    apply_bytes(data, out, ApplyOptions(same_owner=False, devices=False))
    assert not (out / "null").exists()
    assert os.stat(out / "f").st_uid == os.getuid()
