"""The documents a new user reads (issue 10, item 22): an install section a pip user can
follow, and no paths outside the repository."""

from __future__ import annotations

import re

from lamina_testing import REPO

DOCS = [REPO / "README.md", REPO / "bench" / "README.md", *sorted((REPO / "docs").glob("*.md"))]


def test_no_paths_outside_the_repository() -> None:
    for doc in DOCS:
        text = doc.read_text()
        for bad in (r"\.\./", r"(?<![\w.])/work/", r"\bshared/[A-Z]"):
            hits = [ln for ln in text.splitlines() if re.search(bad, ln)]
            assert not hits, f"{doc.relative_to(REPO)}: {hits}"


def test_documents_named_are_in_the_repository() -> None:
    """A document cited by file name (``NAME.md``, outside a URL), in the docs or in the
    code's comments, must be one a reader of the repository can open: design and craft
    notes kept elsewhere are not."""
    here = {p.name for p in REPO.rglob("*.md") if not any(
        part.startswith(".") for part in p.relative_to(REPO).parts)}
    # the OCI image-spec's own documents, cited by section as the spec names them
    here |= {f"{n}.md" for n in ("annotations", "config", "descriptor", "image-index",
                                 "image-layout", "layer", "manifest", "media-types")}
    code = [*sorted((REPO / "src").rglob("*.py")), *sorted((REPO / "bench").glob("*.py"))]
    for doc in [*DOCS, *code]:
        for line in doc.read_text().splitlines():
            for name in re.findall(r"[\w.-]+\.md\b", re.sub(r"\S+://\S+", "", line)):
                assert name in here, f"{doc.relative_to(REPO)}: {name} in {line.strip()!r}"


def test_relative_links_resolve() -> None:
    for doc in DOCS:
        for target in re.findall(r"\]\(([^)#\s]+)\)", doc.read_text()):
            if "://" in target:
                continue
            assert (doc.parent / target).exists(), f"{doc.relative_to(REPO)}: {target}"


def test_readme_has_an_install_section_for_pip_users() -> None:
    text = (REPO / "README.md").read_text()
    m = re.search(r"^## Install\n(.*?)^## ", text, re.S | re.M)
    assert m, "no '## Install' section"
    install = m[1]
    assert "pip install -c constraints.txt ." in install
    assert "python3 -m venv" in install
    # a fresh account has no ~/.local/bin: the link's directory is made before it
    for target in re.findall(r"^ln -s \S+ (\S+)/[^/\s]+$", install, re.M):
        assert re.search(rf"^mkdir -p {re.escape(target)}\b", install, re.M), target
    # what lamina needs at run time, apart from what only the tests need
    assert re.search(r"lamina itself, at run time \| `python3`.*`bubblewrap`", install)
    for peer in ("skopeo", "umoci", "docker-registry", "busybox-static", "chromium"):
        assert re.search(rf"the tests.*{peer}", install), peer
    assert (REPO / "constraints.txt").exists()
