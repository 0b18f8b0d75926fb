"""store/cachemounts.py: instances by sharing mode, df's view, prune."""

from __future__ import annotations

import threading
from pathlib import Path

from lamina.store.cachemounts import CacheMounts, NewDir


def test_sharing_modes_pick_instances(tmp_path: Path) -> None:
    mounts = CacheMounts(tmp_path)
    with mounts.acquire("k", "id-k", "shared", NewDir(0o700)) as a, \
            mounts.acquire("k", "id-k", "shared") as b:
        assert a == b                                   # shared users share
        assert oct(a.stat().st_mode & 0o777) == "0o700"
        with mounts.acquire("k", "id-k", "private") as c:
            assert c != a                               # in use: a new one
            with mounts.acquire("k", "id-k", "shared") as d:
                assert d == a                           # the first one not held alone
        listed = mounts.instances()
        assert [(m.id, m.instance, m.in_use) for m in listed] == [("id-k", 0, True),
                                                                  ("id-k", 1, False)]
    with mounts.acquire("k", "id-k", "private") as e:
        assert e == a                                   # free again: reused
    with mounts.acquire("other", "id-o", "shared") as f:
        assert f.parent.parent != a.parent.parent


def test_seed_fills_a_new_instance_only(tmp_path: Path) -> None:
    mounts = CacheMounts(tmp_path)
    seeded: list[Path] = []

    def seed(data: Path) -> None:
        seeded.append(data)
        (data / "seed").write_text("s")

    with mounts.acquire("k", "k", "shared", seed=seed) as a:
        assert (a / "seed").read_text() == "s"
    with mounts.acquire("k", "k", "shared", seed=seed):
        pass
    assert len(seeded) == 1


def test_locked_waits_and_prune_spares_what_is_held(tmp_path: Path) -> None:
    mounts = CacheMounts(tmp_path)
    waited = threading.Event()
    seen: list[str] = []
    with mounts.acquire("k", "k", "locked") as held:
        (held / "f").write_text("first")

        def second() -> None:
            with mounts.acquire("k", "k", "locked", on_wait=waited.set) as data:
                seen.append((data / "f").read_text())

        t = threading.Thread(target=second)
        t.start()
        assert waited.wait(30)
        with mounts.acquire("j", "j", "shared") as other:
            (other / "x").write_bytes(b"12345")
        removed, freed = mounts.prune()
        assert ([m.id for m in removed], freed) == (["j"], 5)   # "k" is held: kept
        (held / "f").write_text("second")
    t.join(30)
    assert seen == ["second"]
    removed, freed = mounts.prune()
    assert ([m.id for m in removed], freed) == (["k"], 6)
    assert mounts.instances() == []
    assert list((tmp_path / "cache-mounts").iterdir()) == []
