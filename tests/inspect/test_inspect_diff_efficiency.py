"""lamina diff and lamina efficiency: exact figures, from every kind of source."""

from __future__ import annotations

import pytest
from inspect_helpers import A_FINAL, A_TOTAL, A_WASTED, B_TOTAL, B_WASTED, KnownImages

SOURCES = pytest.mark.parametrize("where", [0, 1, 2], ids=["store", "oci", "docker-archive"])


@SOURCES
def test_diff(known: KnownImages, where: int) -> None:
    a, b = known.sources("a")[where], known.sources("b")[where]
    d = known.lamina.run("diff", "--json", a, b).json()
    assert d["shared_layers"] == 2
    assert [r["shared"] for r in d["layers"]] == [True, True, False, False]
    assert d["layers"][3]["b"] is None
    assert d["layers"][2]["a"]["created_by"] == "lamina import a3"
    files = [(f["path"], f["status"], f["changed"]) for f in d["files"]]
    # /etc/same: same size and metadata from different layers -> hashed, equal: absent.
    assert files == [
        ("/app/b", "added", []),
        ("/bin/tool", "changed", ["mode"]),
        ("/data/big", "changed", ["size"]),
        ("/data/old", "added", []),
        ("/etc/motd", "changed", ["content"]),
        ("/opt", "removed", []),
        ("/opt/keep", "removed", []),
    ]
    assert d["summary"] == {"added": {"count": 2, "bytes": 3050},
                            "removed": {"count": 2, "bytes": 200},
                            "changed": {"count": 3, "bytes": 1000 + 6000 + 10}}
    big = d["files"][2]
    assert (big["a"]["size"], big["b"]["size"]) == (6000, 5000)


def test_diff_text_and_identical(known: KnownImages) -> None:
    text = known.lamina.run("diff", "test/a", "test/b").out.splitlines()
    assert text[0] == "Layers: 2 shared, they diverge at layer 3"
    assert "Files: 2 added (3.05kB), 2 removed (200B), 3 changed" in text
    assert any(line.split()[:3] == ["C", "/etc/motd", "10B"] for line in text)
    same = known.lamina.run("diff", "--json", "test/a", f"oci:{known.oci}:test/a:latest").json()
    assert same["shared_layers"] == 4 and same["files"] == []
    assert known.lamina.run("diff", "test/b", "test/b").out.splitlines()[0] == (
        "Layers: 3 shared, all layers are the same")


@SOURCES
def test_efficiency(known: KnownImages, where: int) -> None:
    a, b = known.sources("a")[where], known.sources("b")[where]
    ra = known.lamina.run("efficiency", "--json", a).json()
    assert (ra["total"], ra["final"], ra["wasted"]) == (A_TOTAL, A_FINAL, A_WASTED)
    assert ra["wasted"] == ra["total"] - ra["final"]
    assert ra["wasted_by"] == {"overwritten": 5100, "metadata_only": 1000, "deleted": 3000}
    assert ra["score"] == pytest.approx(1 - 9100 / 16880)
    assert [(p["path"], p["wasted"], p["why"], p["layers"]) for p in ra["paths"]] == [
        ("/data/big", 5000, ["overwritten"], [1]), ("/data/old", 3000, ["deleted"], [1]),
        ("/bin/tool", 1000, ["metadata-only"], [1]), ("/etc/conf", 100, ["overwritten"], [1])]
    assert [x["wasted"] for x in ra["layers"]] == [9100, 0, 0, 0]
    rb = known.lamina.run("efficiency", "--json", b).json()
    assert (rb["total"], rb["wasted"]) == (B_TOTAL, B_WASTED)
    assert rb["wasted_by"] == {"overwritten": 100, "metadata_only": 0, "deleted": 200}
    assert rb["score"] == pytest.approx(1 - 300 / 9930)


def test_efficiency_gates(known: KnownImages) -> None:
    lam = known.lamina
    assert lam.run("efficiency", "test/b", "--fail-under", "0.96",
                   "--max-wasted", "300").code == 0
    res = lam.run("efficiency", "test/b", "--fail-under", "97%", check=False)
    assert res.code == 1 and res.err.strip() == "lamina: efficiency 0.9698 is under 0.9700"
    res = lam.run("efficiency", "test/a", "--max-wasted", "9kB", check=False)
    assert res.code == 1
    assert res.err.strip() == "lamina: 9100 bytes wasted, over the 9000 allowed"
    assert res.out.splitlines()[0] == "Efficiency: 46.09%"
    assert lam.fail("efficiency", "test/a", "--fail-under", "2").code == 3
    assert lam.fail("efficiency", "test/a", "--max-wasted", "lots").code == 3


def test_efficiency_opaque(known: KnownImages) -> None:
    r = known.lamina.run("efficiency", "--json", f"oci:{known.opaque}").json()
    assert (r["total"], r["final"], r["wasted"]) == (35, 5, 30)
    assert r["wasted_by"]["deleted"] == 30
