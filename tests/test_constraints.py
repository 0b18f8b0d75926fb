"""The pins `make install` uses (issue 10, item 20): constraints.txt pins every package the
project and its dev tools need, exactly, and the Makefile installs through it."""

from __future__ import annotations

import re
from importlib.metadata import distribution, requires

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
