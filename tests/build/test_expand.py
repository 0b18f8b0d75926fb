"""Variable expansion and word splitting: the Dockerfile reference's "Environment
replacement" examples, and BuildKit's behaviour where the reference is silent."""

from __future__ import annotations

import pytest

from lamina.build.expand import expand, expand_words
from lamina.errors import InvalidInput

ENV = {"foo": "/bar", "empty": "", "two": "a b", "name": "lamina", "path": "a/b/c.tar.gz"}


@pytest.mark.parametrize(
    ("word", "expected"),
    [
        # The reference's examples.
        ("${foo}", "/bar"),
        ("$foo", "/bar"),
        ("${foo}_bar", "/bar_bar"),
        ("$foo_bar", ""),  # the name runs on: foo_bar is unset
        (r"\$foo", "$foo"),
        (r"\${foo}", "${foo}"),
        ("${unset:-word}", "word"),
        ("${foo:-word}", "/bar"),
        ("${foo:+word}", "word"),
        ("${unset:+word}", ""),
        ("${empty:-word}", "word"),
        ("${empty:+word}", ""),
        # Without the colon only unset counts.
        ("${empty-word}", ""),
        ("${unset-word}", "word"),
        ("${empty+word}", "word"),
        ("${unset+word}", ""),
        ("${foo?must}", "/bar"),
        ("${foo:?must}", "/bar"),
        # Nested and quoted defaults.
        ("${unset:-${foo}}", "/bar"),
        ("${unset:-${also:-deep}}", "deep"),
        ("${unset:-$foo/x}", "/bar/x"),
        ('${unset:-"a b"}', "a b"),
        (r"${unset:-a\}b}", "a}b"),
        ("${foo:+${name}-x}", "lamina-x"),
        # Unset is empty; a $ without a name is literal.
        ("$unset", ""),
        ("${unset}", ""),
        ("5$", "5$"),
        ("a$ b", "a$ b"),
        ("$1", ""),
        ("$$", ""),
        # Quotes.
        ("'$foo'", "$foo"),
        ('"$foo"', "/bar"),
        ('"${foo}"x', "/barx"),
        ("'a\\b'", "a\\b"),
        ('"a\\b"', "a\\b"),  # the escape only quotes " $ and itself inside "..."
        ('"a\\"b"', 'a"b'),
        ('"\\$foo"', "$foo"),
        ('"a\\\\b"', "a\\b"),
        ('"it\'s"', "it's"),
        ("'say \"hi\"'", 'say "hi"'),
        # Escapes outside quotes, blanks kept by expand.
        (r"a\ b", "a b"),
        (r"a\\b", "a\\b"),
        ("x\\", "x"),
        ("/my  dir", "/my  dir"),
        ("$two", "a b"),
        # Pattern operations (reference, Dockerfile 1.7).
        ("${path#*/}", "b/c.tar.gz"),
        ("${path##*/}", "c.tar.gz"),
        ("${path%.*}", "a/b/c.tar"),
        ("${path%%.*}", "a/b/c"),
        ("${path/\\//-}", "a-b/c.tar.gz"),
        ("${path//\\//-}", "a-b-c.tar.gz"),
        ("${path//[ab]/X}", "X/X/c.tXr.gz"),
        ("${path/b}", "a//c.tar.gz"),
        ("${unset#x}", ""),
    ],
)
def test_expand(word: str, expected: str) -> None:
    assert expand(word, ENV) == expected


@pytest.mark.parametrize(
    ("word", "expected"),
    [
        ("`$foo", "$foo"),
        ("a`b", "ab"),
        ("C:\\dir\\$name", "C:\\dir\\lamina"),
        ('"a``b"', "a`b"),
        ('"a`"b"', 'a"b'),
    ],
)
def test_expand_with_backtick_escape(word: str, expected: str) -> None:
    assert expand(word, ENV, escape="`") == expected


@pytest.mark.parametrize(
    ("word", "cause"),
    [
        ("${foo", "missing '}'"),
        ("${", "missing '}'"),
        ("${unset:-x", "missing '}'"),
        ("${}", "bad substitution"),
        ("${:x}", "bad substitution"),
        ("${foo:=x}", "unsupported modifier"),
        ("${foo bar}", "bad substitution"),
        ("'open", "unterminated single quote"),
        ('"open', "unterminated double quote"),
        ("${unset:?need it}", "unset: need it"),
        ("${empty:?}", "empty: is not allowed to be unset or empty"),
        ("${unset?}", "unset: is not allowed to be unset"),
    ],
)
def test_expand_errors(word: str, cause: str) -> None:
    with pytest.raises(InvalidInput, match=cause.replace("{", r"\{").replace("$", r"\$")):
        expand(word, ENV)


def test_empty_value_with_question_mark_without_colon_is_fine() -> None:
    assert expand("${empty?need}", ENV) == ""


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("a b  c", ["a", "b", "c"]),
        ("  a  ", ["a"]),
        ("", []),
        ('"a b" c', ["a b", "c"]),
        ("'a b'c d", ["a bc", "d"]),
        (r"a\ b c", ["a b", "c"]),
        ("$two c", ["a", "b", "c"]),  # an unquoted value splits
        ('"$two" c', ["a b", "c"]),  # a quoted one does not
        ("x$two", ["xa", "b"]),
        ("$empty a", ["a"]),
        ('"" a', ["a"]),  # BuildKit drops empty words
        ("${foo} /dst/", ["/bar", "/dst/"]),
        ("\tsrc\t/dst", ["src", "/dst"]),
        ("80/tcp 443", ["80/tcp", "443"]),
    ],
)
def test_expand_words(text: str, expected: list[str]) -> None:
    assert expand_words(text, ENV) == expected


def test_error_names_the_word() -> None:
    with pytest.raises(InvalidInput) as info:
        expand("x${y", {})
    assert "x${y" in str(info.value)
