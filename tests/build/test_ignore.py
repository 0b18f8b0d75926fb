""".dockerignore / .containerignore: the patterns of Docker's "dockerignore file" docs."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from lamina.build.ignore import IgnoreMatcher, _translate
from lamina.errors import InvalidInput


@pytest.mark.parametrize(
    ("patterns", "path", "excluded"),
    [
        # The documentation's examples.
        (["*/temp*"], "somedir/temporary.txt", True),
        (["*/temp*"], "somedir/temp", True),
        (["*/temp*"], "temp", False),
        (["*/temp*"], "a/b/temp", False),
        (["*/*/temp*"], "somedir/subdir/temporary.txt", True),
        (["*/*/temp*"], "somedir/temporary.txt", False),
        (["temp?"], "tempa", True),
        (["temp?"], "temp", False),
        (["temp?"], "tempab", False),
        (["temp?"], "dir/tempa", False),
        (["**/*.go"], "main.go", True),
        (["**/*.go"], "a/b/c/main.go", True),
        (["**/*.go"], "a/main.gox", False),
        (["*.md", "!README.md"], "notes.md", True),
        (["*.md", "!README.md"], "README.md", False),
        (["*.md", "!README*.md", "README-secret.md"], "README-secret.md", True),
        (["*.md", "!README*.md", "README-secret.md"], "README-public.md", False),
        # A directory pattern excludes what is under it.
        (["dir"], "dir", True),
        (["dir"], "dir/x", True),
        (["dir"], "dir/a/b/c", True),
        (["dir"], "dirx", False),
        (["dir"], "other/dir", False),
        (["dir/"], "dir/x", True),
        (["a/b"], "a/b/c", True),
        (["a/b"], "a", False),
        (["a/**"], "a/x/y", True),
        (["a/**"], "a", False),
        (["a/**/z"], "a/z", True),
        (["a/**/z"], "a/x/y/z", True),
        (["a/**/z"], "a/x/y/zz", False),
        (["**"], "anything/at/all", True),
        # Cleaning and whitespace.
        (["/abs"], "abs", True),
        (["./a//b/"], "a/b", True),
        (["a/../b"], "b", True),
        (["  spaced  "], "spaced", True),
        (["! keep", "keep"], "keep", True),
        (["*", "! keep"], "keep", False),
        # Classes and escapes (Go filepath.Match).
        (["[a-c].txt"], "b.txt", True),
        (["[a-c].txt"], "d.txt", False),
        (["[^a-c].txt"], "d.txt", True),
        (["[^a-c].txt"], "a.txt", False),
        (["[]]x"], "]x", True),
        (["\\*"], "*", True),
        (["\\*"], "a", False),
        (["a?c"], "a/c", False),
        (["[^x]"], "/", False),
        # Comments and blank lines.
        (["# comment", "", "x"], "# comment", False),
        (["# comment", "x"], "x", True),
        (["  # not a comment"], "# not a comment", True),
        # Last match wins, exceptions of exceptions.
        (["*", "!src", "src/*.tmp"], "src/a.go", False),
        (["*", "!src", "src/*.tmp"], "src/a.tmp", True),
        (["*", "!src", "src/*.tmp"], "doc/a", True),
        ([], "anything", False),
    ],
)
def test_matches(patterns: list[str], path: str, excluded: bool) -> None:
    assert IgnoreMatcher.from_lines(patterns).matches(path) is excluded


@pytest.mark.parametrize(
    ("patterns", "directory", "maybe"),
    [
        (["build"], "build", False),
        (["build", "!build/keep"], "build", True),
        (["build", "!build/keep/x"], "build/keep", True),
        (["build", "!build/keep/x"], "build/keep/x", False),
        (["build", "!build/keep"], "build/other", False),
        (["build", "!build/keep"], "dist", False),
        (["build", "!build"], "build", False),  # re-included at the same level, not below
        (["*", "!*/keep"], "a", True),
        (["*", "!*/keep"], "a/b", False),
        (["*", "!a/*/keep"], "a", True),
        (["*", "!a/*/keep"], "b", False),
        (["*", "!**/keep"], "a/b/c", True),
        (["*", "!a/**/keep"], "b", False),
        (["*", "!a/**/keep"], "a/b", True),
        (["*", "![ab]/x"], "b", True),
        (["*", "![ab]/x"], "c", False),
        (["*", "!README.md"], "docs", False),
    ],
)
def test_may_match_inside(patterns: list[str], directory: str, maybe: bool) -> None:
    assert IgnoreMatcher.from_lines(patterns).may_match_inside(directory) is maybe


def test_may_match_inside_never_hides_a_reincluded_path() -> None:
    """Whenever a path under an excluded directory is included, the walker must descend."""
    patterns = ["*", "!a/*/keep", "a/x", "!**/deep/keep", "b/**", "!b/1/[0-9]"]
    matcher = IgnoreMatcher.from_lines(patterns)
    paths = [
        "/".join(parts)
        for parts in [
            ("a",),
            ("a", "x"),
            ("a", "x", "keep"),
            ("a", "y", "keep"),
            ("a", "y", "no"),
            ("b",),
            ("b", "1"),
            ("b", "1", "2"),
            ("b", "1", "2", "deep", "keep"),
            ("c", "deep", "keep"),
            ("c", "deep"),
            ("c",),
        ]
    ]
    for path in paths:
        if matcher.matches(path):
            continue
        parents = path.split("/")[:-1]
        for depth in range(1, len(parents) + 1):
            directory = "/".join(parents[:depth])
            if matcher.matches(directory):
                assert matcher.may_match_inside(directory), (path, directory)


@pytest.mark.parametrize(
    ("line", "cause"),
    [
        ("!", "must be followed"),
        ("[a-", "unterminated"),
        ("a\\", "trailing backslash"),
        ("[z-a]", "bad range"),
    ],
)
def test_bad_patterns(line: str, cause: str) -> None:
    with pytest.raises(InvalidInput, match=rf"^\.dockerignore:2: .*{cause}"):
        IgnoreMatcher.from_lines(["ok", line])


def test_from_context_prefers_containerignore(tmp_path: Path) -> None:
    assert not IgnoreMatcher.from_context(tmp_path).matches("x")
    (tmp_path / ".dockerignore").write_text("x\n")
    assert IgnoreMatcher.from_context(tmp_path).matches("x")
    (tmp_path / ".containerignore").write_text("y\n")
    matcher = IgnoreMatcher.from_context(tmp_path)
    assert matcher.matches("y") and not matcher.matches("x")


def test_from_context_per_containerfile_ignore_file(tmp_path: Path) -> None:
    (tmp_path / ".dockerignore").write_text("x\n")
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / "Containerfile.dockerignore").write_text("z\n")
    matcher = IgnoreMatcher.from_context(tmp_path, "sub/Containerfile")
    assert matcher.matches("z") and not matcher.matches("x")
    assert IgnoreMatcher.from_context(tmp_path, "Containerfile").matches("x")


def test_from_context_bom_and_crlf(tmp_path: Path) -> None:
    (tmp_path / ".dockerignore").write_bytes(b"\xef\xbb\xbfa\r\n# c\r\nb\r\n")
    matcher = IgnoreMatcher.from_context(tmp_path)
    assert matcher.matches("a") and matcher.matches("b")
    assert matcher.patterns == ("a", "b")


def _naive_matches(patterns: list[str], path: str) -> bool:
    """The rule restated without caching: the last pattern matching the path or a parent."""
    parts = path.split("/")
    prefixes = ["/".join(parts[: i + 1]) for i in range(len(parts))]
    excluded = False
    for line in patterns:
        exclusion = line.startswith("!")
        regex = re.compile(_translate(line.lstrip("!")), re.DOTALL)
        if any(regex.fullmatch(p) for p in prefixes):
            excluded = not exclusion
    return excluded


def test_cached_answers_match_the_rule_in_any_order() -> None:
    patterns = ["*/tmp", "!a/tmp", "a/tmp/x*", "**/*.log", "!keep/**/*.log", "b", "!b/c/d"]
    paths = [
        "a",
        "a/tmp",
        "a/tmp/x1",
        "a/tmp/y",
        "z/tmp",
        "z/tmp/q",
        "q.log",
        "d/e/f.log",
        "keep/f.log",
        "keep/g/h.log",
        "b",
        "b/c",
        "b/c/d",
        "b/c/d/e",
        "b/x",
    ]
    expected = {p: _naive_matches(patterns, p) for p in paths}
    for order in (paths, list(reversed(paths)), sorted(paths, key=len, reverse=True)):
        matcher = IgnoreMatcher.from_lines(patterns)
        assert {p: matcher.matches(p) for p in order} == expected
    assert expected["a/tmp/x1"] and not expected["a/tmp/y"] and not expected["b/c/d/e"]


def test_deep_paths_do_not_recurse() -> None:
    deep = "/".join(["d"] * 3000)
    assert IgnoreMatcher.from_lines(["d/d/d"]).matches(deep + "/file")
