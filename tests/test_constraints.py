"""The pins `make install` uses (issue 10, item 20): constraints.txt pins every package the
project and its dev tools need, exactly, and the Makefile installs through it."""

from __future__ import annotations

import re
import shutil
import subprocess
from importlib.metadata import distribution, requires
from pathlib import Path

from packaging.requirements import Requirement

from lamina_testing import REPO


def _canon(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def _pins() -> dict[str, str]:
    pins = {}
    for line in (REPO / "constraints.txt").read_text().splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        m = re.fullmatch(r"([A-Za-z0-9][A-Za-z0-9._-]*)==([^=\s;]+)", line)
        assert m, f"not an exact pin: {line!r}"
        pins[_canon(m[1])] = m[2]
    return pins


def _closure(reqs: list[str]) -> set[str]:
    """The distributions these requirements need here, transitively (markers evaluated
    for this machine, with every extra of lamina's own and none below it)."""
    seen: set[str] = set()
    todo = [(Requirement(r), True) for r in reqs]
    while todo:
        req, top = todo.pop()
        if req.marker is not None and not req.marker.evaluate(
                {"extra": "dev" if top else ""}):
            continue
        name = _canon(req.name)
        if name in seen:
            continue
        seen.add(name)
        todo.extend((Requirement(r), False) for r in distribution(name).requires or [])
    return seen


def test_every_dependency_is_pinned_exactly() -> None:
    pins = _pins()
    missing = sorted(_closure(requires("lamina") or []) - set(pins))
    assert not missing, f"not in constraints.txt: {missing}"


def test_make_install_uses_the_constraints() -> None:
    makefile = (REPO / "Makefile").read_text()
    stamp_rule = re.search(r"^\$\(STAMP\):(.*)$", makefile, re.M)
    assert stamp_rule and "constraints.txt" in stamp_rule[1]
    assert re.search(r"pip install .*-c constraints\.txt -e '\.\[dev\]'", makefile)
    assert re.search(r"^update-constraints:", makefile, re.M)
    assert re.search(r"^test-latest:", makefile, re.M)


def _test_latest_report(tmp_path: Path, freeze: str) -> str:
    """What `make test-latest` says about the newest releases, with a stand-in venv whose
    pip freezes ``freeze`` (its installs and the suite are no-ops here)."""
    tmp_path.mkdir()
    shutil.copy(REPO / "Makefile", tmp_path)
    shutil.copy(REPO / "constraints.txt", tmp_path)
    bin_ = tmp_path / ".venv-latest" / "bin"
    bin_.mkdir(parents=True)
    (tmp_path / "freeze.out").write_text(freeze)
    (bin_ / "pip").write_text('#!/bin/sh\n[ "$1" = freeze ] && cat "$(dirname "$0")/../../'
                              'freeze.out"\nexit 0\n')
    (bin_ / "python").write_text("#!/bin/sh\nexit 0\n")
    for tool in ("pip", "python"):
        (bin_ / tool).chmod(0o755)
    # -o debs: the Debian peers are not this test's business.
    res = subprocess.run(["make", "-s", "-o", "debs", "test-latest"], cwd=tmp_path,
                         capture_output=True, text=True, check=True)
    return res.stdout


def test_make_test_latest_names_only_real_differences(tmp_path: Path) -> None:
    """The same pins in another order (pip freeze sorts psycopg-binary before or after
    psycopg depending on its version) are no difference; a newer release is one."""
    pins = [ln for ln in (REPO / "constraints.txt").read_text().splitlines()
            if ln and not ln.startswith("#")]
    out = _test_latest_report(tmp_path / "same", "\n".join(reversed(pins)) + "\n")
    assert "the newest releases are the pinned ones" in out, out
    newer = [re.sub(r"^click==.*", "click==99.0", ln) for ln in pins]
    out = _test_latest_report(tmp_path / "newer", "\n".join(newer) + "\n")
    diff = [ln for ln in out.splitlines() if ln[:1] in "<>"]
    assert sorted(diff) == ["< " + next(p for p in pins if p.startswith("click==")),
                            "> click==99.0"], out
