"""Containerfile parsing: cases from the Dockerfile reference and BuildKit's parser."""

from __future__ import annotations

import pytest

from lamina.build.dockerfile import (
    INSTRUCTIONS,
    Containerfile,
    Heredoc,
    Instruction,
    exec_or_shell,
    healthcheck,
    parse,
    parse_arg,
    parse_args,
    parse_duration,
    parse_instruction,
    parse_key_values,
    split_words,
)
from lamina.errors import InvalidInput


def only(text: str) -> Instruction:
    """The single instruction after ``FROM scratch``."""
    cf = parse("FROM scratch\n" + text)
    (ins,) = cf.stages[0].instructions
    return ins


# --- lines: comments, continuations, directives ---------------------------------------


def test_continuation_and_comments_inside_it() -> None:
    ins = only(
        "RUN apt-get update && \\\n"
        "    # a comment inside the continuation is dropped\n"
        "  #   indented too\n"
        "    apt-get install -y nginx   \\   \n"
        "\n"
        "    && rm -rf /var/lib/apt\n"
    )
    assert ins.args == (
        "apt-get update &&     apt-get install -y nginx       && rm -rf /var/lib/apt",
    )
    assert ins.line == 2
    assert not ins.json_form


def test_lines_numbers_after_comments_blank_lines_and_continuations() -> None:
    cf = parse("# top\n\nFROM a\nRUN x \\\n  y\n\n   # c\nUSER me\n")
    (run, user) = cf.stages[0].instructions
    assert (cf.stages[0].from_instruction.line, run.line, user.line) == (3, 4, 8)
    assert run.original == "RUN x   y"


def test_escaped_escape_at_end_is_not_a_continuation() -> None:
    cf = parse("FROM a\nRUN echo \\\\\nUSER x\n")
    run, user = cf.stages[0].instructions
    assert run.args == ("echo \\\\",) and user.args == ("x",)


def test_backtick_escape_directive_windows_style() -> None:
    # The reference's "escape" example: backslashes are path separators.
    cf = parse(
        "# escape=`\n\nFROM microsoft/nanoserver\nCOPY testfile.txt c:\\\nRUN dir c:\\ `\n    /b\n"
    )
    assert cf.escape == "`"
    copy, run = cf.stages[0].instructions
    assert split_words(copy) == ["testfile.txt", "c:\\"]
    assert run.args == ("dir c:\\     /b",)
    assert copy.escape == "`"


def test_without_the_directive_the_windows_example_breaks_lines() -> None:
    cf = parse("FROM microsoft/nanoserver\nCOPY testfile.txt c:\\\\\nRUN dir c:\\\n")
    copy, run = cf.stages[0].instructions
    assert copy.args == ("testfile.txt c:\\\\",)
    assert run.args == ("dir c:",)  # a continuation may end the file
    cf = parse("FROM x\nCOPY testfile.txt c:\\\nRUN dir c:\\\n")
    (copy,) = cf.stages[0].instructions
    assert copy.args == ("testfile.txt c:RUN dir c:",)


@pytest.mark.parametrize(
    ("text", "escape"),
    [
        ("# escape=`\nFROM a\n", "`"),
        ("#escape = ` \nFROM a\n", "`"),
        ("# ESCAPE=`\nFROM a\n", "`"),
        ("# syntax=docker/dockerfile:1\n# escape=`\nFROM a\n", "`"),
        ("# check=skip=all\n# escape=`\nFROM a\n", "`"),
        ("\n# escape=`\nFROM a\n", "\\"),  # after a blank line it is a comment
        ("# hello\n# escape=`\nFROM a\n", "\\"),  # after a comment too
        ("# unknown=x\n# escape=`\nFROM a\n", "\\"),  # an unknown directive is a comment
        ("FROM a\n# escape=`\n", "\\"),
        ("\ufeff# escape=`\nFROM a\n", "`"),
    ],
)
def test_directives(text: str, escape: str) -> None:
    assert parse(text).escape == escape


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("# escape=`\n# escape=\\\nFROM a\n", "Containerfile:2: only one escape parser directive"),
        ("# escape=x\nFROM a\n", "Containerfile:1: invalid escape character 'x'"),
    ],
)
def test_directive_errors(text: str, message: str) -> None:
    with pytest.raises(InvalidInput, match=f"^{message}"):
        parse(text)


def test_crlf_line_endings() -> None:
    cf = parse("FROM a\r\nRUN x \\\r\n  y\r\nUSER u\r\n")
    run, user = cf.stages[0].instructions
    assert run.args == ("x   y",) and user.args == ("u",)


def test_empty_continuation_line_is_a_warning() -> None:
    cf = parse("FROM a\nRUN x \\\n\n  y\n")
    assert cf.stages[0].instructions[0].args == ("x   y",)
    assert any("empty continuation" in w for w in cf.warnings)


# --- forms ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("line", "args", "json_form"),
    [
        ('CMD ["echo", "hi"]', ("echo", "hi"), True),
        ('CMD [ "echo" , "a b" ]', ("echo", "a b"), True),
        ("CMD []", (), True),
        ('CMD ["a\\"b", "\\u00e9"]', ('a"b', "é"), True),
        ("CMD echo hi", ("echo hi",), False),
        # Looks like JSON but is not: the shell form, as Docker reads it.
        ("CMD [echo, hi]", ("[echo, hi]",), False),
        ("CMD ['echo', 'hi']", ("['echo', 'hi']",), False),
        ('CMD ["echo", "hi",]', ('["echo", "hi",]',), False),
        ('CMD ["unterminated"', ('["unterminated"',), False),
        ('CMD {"a": 1}', ('{"a": 1}',), False),
        ('ENTRYPOINT ["/bin/sh", "-c"]', ("/bin/sh", "-c"), True),
        ("ENTRYPOINT exec top -b", ("exec top -b",), False),
        ('RUN ["/bin/bash", "-c", "echo hello"]', ("/bin/bash", "-c", "echo hello"), True),
        ('RUN echo "[not json]"', ('echo "[not json]"',), False),
        ('SHELL ["powershell", "-command"]', ("powershell", "-command"), True),
        ('COPY ["a b", "/dst/"]', ("a b", "/dst/"), True),
        ('ADD ["a", "b", "/dst/"]', ("a", "b", "/dst/"), True),
        ('VOLUME ["/data"]', ("/data",), True),
        ("VOLUME /var/log /var/db", ("/var/log /var/db",), False),
        ('USER ["root"]', ('["root"]',), False),  # only some instructions have an exec form
    ],
)
def test_exec_and_shell_forms(line: str, args: tuple[str, ...], json_form: bool) -> None:
    ins = only(line)
    assert ins.args == args
    assert ins.json_form is json_form


def test_text_after_a_json_array_is_ignored_with_a_warning() -> None:
    # BuildKit decodes one JSON value and ignores the rest of the line.
    cf = parse('FROM a\nCMD ["nginx", "-g", "daemon off;"]  # foreground\n')
    (cmd,) = cf.stages[0].instructions
    assert cmd.json_form and cmd.args == ("nginx", "-g", "daemon off;")
    assert cf.warnings == (
        "Containerfile: line 2: ignoring text after the JSON array: # foreground",
    )


def test_parsed_files_are_hashable_values() -> None:
    text = "FROM a AS b\nRUN --mount=type=cache,target=/c make\n"
    assert parse(text) == parse(text)
    assert hash(parse(text)) == hash(parse(text))
    assert len({parse(text).stages[0].instructions[0]}) == 1


def test_json_array_of_non_strings_is_an_error() -> None:
    with pytest.raises(InvalidInput, match="^Containerfile:2: CMD: a JSON array must hold only"):
        parse("FROM a\nCMD [1, 2]\n")


def test_exec_or_shell() -> None:
    assert exec_or_shell(only('CMD ["a", "b"]'), ["/bin/sh", "-c"]) == ["a", "b"]
    assert exec_or_shell(only("CMD a $b"), ["/bin/sh", "-c"]) == ["/bin/sh", "-c", "a $b"]
    assert exec_or_shell(only("RUN x"), ["cmd", "/S", "/C"]) == ["cmd", "/S", "/C", "x"]


# --- keywords and flags ------------------------------------------------------------------

EVERY_INSTRUCTION = {
    "ADD": "ADD src /dst",
    "ARG": "ARG name=default",
    "CMD": "CMD run",
    "COPY": "COPY src /dst",
    "ENTRYPOINT": "ENTRYPOINT run",
    "ENV": "ENV k=v",
    "EXPOSE": "EXPOSE 80",
    "HEALTHCHECK": "HEALTHCHECK NONE",
    "LABEL": "LABEL k=v",
    "MAINTAINER": "MAINTAINER someone <a@b.c>",
    "ONBUILD": "ONBUILD RUN make",
    "RUN": "RUN make",
    "SHELL": 'SHELL ["/bin/bash", "-c"]',
    "STOPSIGNAL": "STOPSIGNAL SIGTERM",
    "USER": "USER app",
    "VOLUME": "VOLUME /data",
    "WORKDIR": "WORKDIR /app",
}


@pytest.mark.parametrize("keyword", sorted(INSTRUCTIONS - {"FROM"}))
def test_every_instruction_any_case(keyword: str) -> None:
    line = EVERY_INSTRUCTION[keyword]
    for spelled in (line, line[: len(keyword)].lower() + line[len(keyword) :]):
        assert only(spelled).cmd == keyword


def test_every_instruction_is_covered() -> None:
    assert set(EVERY_INSTRUCTION) | {"FROM"} == INSTRUCTIONS


@pytest.mark.parametrize(
    ("line", "flags"),
    [
        ("COPY --from=build /a /b", {"from": "build"}),
        (
            "COPY --from=build --chown=app:app --chmod=644 a b",
            {"from": "build", "chown": "app:app", "chmod": "644"},
        ),
        ("COPY --link a b", {"link": "true"}),
        ("COPY --link=false a b", {"link": "false"}),
        ("COPY --parents --exclude=*.tmp a b", {"parents": "true", "exclude": "*.tmp"}),
        ('COPY --chown="a b" x y', {"chown": "a b"}),
        (
            f"ADD --checksum=sha256:{'ab' * 32} --keep-git-dir=TRUE u /d",
            {"checksum": f"sha256:{'ab' * 32}", "keep-git-dir": "true"},
        ),
        ("ADD --chown=1:1 a /d", {"chown": "1:1"}),
        (
            "RUN --network=none --security=insecure make",
            {"network": "none", "security": "insecure"},
        ),
        (
            "RUN --mount=type=cache,target=/root/.cache make",
            {"mount": "type=cache,target=/root/.cache"},
        ),
        ("RUN -- --not-a-flag", {}),
        ("RUN make --flag=later", {}),
        (
            "HEALTHCHECK --interval=5m --timeout=3s --retries=3 CMD curl -f http://localhost/",
            {"interval": "5m", "timeout": "3s", "retries": "3"},
        ),
    ],
)
def test_flags(line: str, flags: dict[str, str]) -> None:
    assert dict(only(line).flags) == flags


def test_flags_are_not_part_of_args() -> None:
    ins = only("COPY --from=build --chown=1:2 a  b /dst/")
    assert ins.args == ("a  b /dst/",)
    assert split_words(ins) == ["a", "b", "/dst/"]
    assert only("RUN -- --x").args == ("--x",)


def test_repeated_mounts_keep_every_value() -> None:
    ins = only("RUN --mount=type=cache,target=/a --mount=type=secret,id=s make")
    assert ins.flag_values("mount") == ["type=cache,target=/a", "type=secret,id=s"]
    assert ins.flags["mount"] == "type=secret,id=s"
    assert ins.args == ("make",)


@pytest.mark.parametrize(
    ("line", "message"),
    [
        ("COPY --form=x a b", "unknown flag for COPY: --form"),
        ("ENV --x=1 a=b", "unknown flag for ENV: --x"),
        ("CMD --help", "unknown flag for CMD: --help"),
        ("COPY --from=a --from=b x y", "duplicate flag for COPY: --from"),
        ("COPY --from x y", "--from needs a value"),
        ("COPY --link=maybe x y", "--link takes true or false"),
        ("ADD --from=x a b", "unknown flag for ADD: --from"),
    ],
)
def test_flag_errors(line: str, message: str) -> None:
    with pytest.raises(InvalidInput, match=f"^Containerfile:2: {message}"):
        parse("FROM a\n" + line + "\n")


# --- stages ---------------------------------------------------------------------------


def test_stages_names_platform_and_global_args() -> None:
    cf = parse(
        "ARG VERSION=latest\n"
        "ARG BASE\n"
        "FROM --platform=$BUILDPLATFORM golang:${VERSION} AS Build\n"
        "ARG VERSION\n"
        "RUN go build\n"
        "FROM busybox as final-1.x\n"
        "COPY --from=build /out /bin/\n"
        "FROM scratch\n"
    )
    assert [a.args for a in cf.global_args] == [("VERSION=latest",), ("BASE",)]
    build, final, last = cf.stages
    assert (build.index, build.name, build.base, build.platform) == (
        0,
        "build",
        "golang:${VERSION}",
        "$BUILDPLATFORM",
    )
    assert [i.cmd for i in build.instructions] == ["ARG", "RUN"]
    assert (final.name, final.base, final.platform) == ("final-1.x", "busybox", None)
    assert (last.index, last.name, last.base) == (2, None, "scratch")
    assert build.from_instruction.cmd == "FROM"
    assert cf.stage("build") is build and cf.stage("BUILD") is build
    assert cf.stage("0") is build and cf.stage("2") is last
    assert cf.find_stage("missing") is None and cf.find_stage("3") is None
    with pytest.raises(InvalidInput, match="no build stage named 'nope'"):
        cf.stage("nope")


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("", "^Containerfile: file with no instructions"),
        ("# only a comment\n\n", "^Containerfile: file with no instructions"),
        ("ARG x\n", "^Containerfile: no FROM instruction"),
        ("RUN x\nFROM a\n", "^Containerfile:1: RUN before the first FROM"),
        ("ARG a\n\nENV b=c\nFROM a\n", "^Containerfile:3: ENV before the first FROM"),
        (
            "FROM a\nCOPPY x y\n",
            "^Containerfile:2: unknown instruction: COPPY \\(did you mean COPY\\?\\)",
        ),
        ("FROM a\n\n\n\n\n\nfrobnicate\n", "^Containerfile:7: unknown instruction: frobnicate$"),
        (
            "FROM a\nRUN x \\\n y\nCOPY x\n",
            "^Containerfile:4: COPY needs a source and a destination",
        ),
        ("FROM\n", "^Containerfile:1: FROM takes an image"),
        ("FROM a b\n", "^Containerfile:1: FROM takes an image"),
        ("FROM a AS\n", "^Containerfile:1: FROM takes an image"),
        ("FROM a AS 1st\n", "^Containerfile:1: invalid stage name '1st'"),
        (
            "FROM a AS x\nFROM b AS X\n",
            "^Containerfile:2: duplicate stage name 'x' \\(also on line 1\\)",
        ),
        ("FROM a\nSHELL /bin/sh -c\n", "^Containerfile:2: SHELL needs the JSON form"),
        ("FROM a\nSHELL []\n", "^Containerfile:2: SHELL requires at least one argument"),
        ("FROM a\nRUN\n", "^Containerfile:2: RUN requires at least one argument"),
        ("FROM a\nRUN []\n", "^Containerfile:2: RUN requires at least one argument"),
        ("FROM a\nCMD\n", "^Containerfile:2: CMD requires an argument"),
        ("FROM a\nEXPOSE\n", "^Containerfile:2: EXPOSE requires at least one argument"),
        ("FROM a\nWORKDIR\n", "^Containerfile:2: WORKDIR requires exactly one argument"),
        ("FROM a\nUSER  \n", "^Containerfile:2: USER requires exactly one argument"),
        ('FROM a\nVOLUME ["/a", " "]\n', "^Containerfile:2: VOLUME can not be an empty string"),
        ("FROM a\nENV\n", "^Containerfile:2: ENV requires at least one argument"),
        ("FROM a\nENV onlykey\n", "^Containerfile:2: ENV onlykey needs a value"),
        ("FROM a\nENV a=1 b\n", "^Containerfile:2: ENV: can't find = in 'b'"),
        ("FROM a\nLABEL =x\n", "^Containerfile:2: LABEL names can not be blank"),
        ("FROM a\nARG\n", "^Containerfile:2: ARG requires at least one argument"),
        ("FROM a\nARG =x\n", "^Containerfile:2: ARG names can not be blank"),
        ("FROM a\nONBUILD\n", "^Containerfile:2: ONBUILD needs an instruction"),
        ("FROM a\nONBUILD ONBUILD RUN x\n", "^Containerfile:2: chaining ONBUILD"),
        ("FROM a\nONBUILD FROM b\n", "^Containerfile:2: FROM isn't allowed as an ONBUILD trigger"),
        (
            "FROM a\nonbuild maintainer me\n",
            "^Containerfile:2: MAINTAINER isn't allowed as an ONBUILD",
        ),
        ("FROM a\nONBUILD COPPY a b\n", "^Containerfile:2: unknown instruction: COPPY"),
        ("FROM a\nONBUILD COPY a\n", "^Containerfile:2: COPY needs a source and a destination"),
        ("FROM a\nHEALTHCHECK\n", "^Containerfile:2: HEALTHCHECK needs CMD or NONE"),
        ("FROM a\nHEALTHCHECK NONE x\n", "^Containerfile:2: HEALTHCHECK NONE takes no arguments"),
        ("FROM a\nHEALTHCHECK --retries=3 NONE\n", "^Containerfile:2: HEALTHCHECK NONE takes no"),
        ("FROM a\nHEALTHCHECK RUN x\n", "^Containerfile:2: unknown type 'RUN' in HEALTHCHECK"),
        ("FROM a\nHEALTHCHECK CMD\n", "^Containerfile:2: missing command after HEALTHCHECK CMD"),
        ("FROM a\nHEALTHCHECK CMD []\n", "^Containerfile:2: missing command after HEALTHCHECK CMD"),
        (
            "FROM a\nHEALTHCHECK --interval=5 CMD x\n",
            "^Containerfile:2: --interval=5: not a duration",
        ),
        (
            "FROM a\nHEALTHCHECK --timeout=1us CMD x\n",
            "^Containerfile:2: --timeout=1us: cannot be less than 1ms",
        ),
        ("FROM a\nHEALTHCHECK --retries=0 CMD x\n", "^Containerfile:2: --retries=0: must be"),
    ],
)
def test_errors_name_file_line_and_cause(text: str, message: str) -> None:
    with pytest.raises(InvalidInput, match=message):
        parse(text)


def test_error_path_is_the_given_name() -> None:
    with pytest.raises(InvalidInput, match="^sub/Dockerfile.dev:1: unknown instruction: X"):
        parse("X\n", path="sub/Dockerfile.dev")


HEREDOC_FILE = """\
# syntax=docker/dockerfile:1.7
# check=skip=all
FROM a
RUN <<EOF
echo $HOME
# a body line, not a comment \\
EOF
RUN <<A cat /dev/stdin && <<-"B" cat > /x
hello
A
\tworld $X
\t\tB
COPY --chmod=755 <<EOF /a << 'F' /
x
EOF
y
F
RUN 3<<EOF cat /dev/fd/3 \\
    && true
three
EOF
ONBUILD RUN <<X
echo hi
X
LABEL after=1
"""


def test_heredocs() -> None:
    """Here-Documents: bodies after the whole line, in the order the words open them;
    `<<-` strips tabs from the terminator (and the body where used); a quoted delimiter
    turns expansion off; `<< EOF` is one word (BuildKit's lexer)."""
    cf = parse(HEREDOC_FILE)
    run1, run2, copy, run3, onbuild, label = cf.stages[0].instructions
    assert (run1.args, run1.line) == (("<<EOF",), 4)
    assert run1.heredocs == (Heredoc("EOF", "echo $HOME\n# a body line, not a comment \\\n"),)
    assert run2.heredocs == (Heredoc("A", "hello\n"),
                             Heredoc("B", "\tworld $X\n", chomp=True, expand=False))
    assert run2.heredocs[1].body == "world $X\n"
    assert copy.heredocs == (Heredoc("EOF", "x\n"), Heredoc("F", "y\n", expand=False))
    assert split_words(copy) == ["<<EOF", "/a", "<< 'F'", "/"]
    assert run3.args == ("3<<EOF cat /dev/fd/3     && true",)
    assert run3.heredocs == (Heredoc("EOF", "three\n", fd=3),)
    # ONBUILD keeps the trigger with its body, as BuildKit stores it; it parses again.
    assert onbuild.args == ("RUN <<X\necho hi\nX",)
    assert parse_instruction(onbuild.args[0]).heredocs == (Heredoc("X", "echo hi\n"),)
    assert (label.cmd, label.line) == ("LABEL", 25)
    assert cf.notes == ("Containerfile:1: note: ignoring '# syntax=docker/dockerfile:1.7': "
                        "lamina parses the file with its own Dockerfile frontend",)


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("FROM a\nRUN <<EOF\necho hi\n", "Containerfile:2: unterminated heredoc"),
        ("FROM a\nRUN <<A <<B\na\nA\nb\n", "Containerfile:2: unterminated heredoc"),
        ("FROM a\nCOPY <<EOF <<B\nx\nEOF\ny\nB\n",
         "Containerfile:2: COPY cannot accept a heredoc as a dest"),
        ("FROM a\nCOPY --chmod=9 x /y\n", "Containerfile:2: invalid --chmod=9: an octal"),
        ("FROM a\nADD --chmod=70000 x /y\n", "Containerfile:2: invalid --chmod=70000"),
        ("FROM a\nADD --checksum=md5:00 http://h/x /y\n",
         "Containerfile:2: invalid --checksum=md5:00"),
    ],
)
def test_bad_heredocs_and_copy_flags(text: str, message: str) -> None:
    with pytest.raises(InvalidInput, match=f"^{message}"):
        parse(text)


def test_heredoc_terminator_is_the_whole_line() -> None:
    # "EOF " is body, not the end; a tab before the terminator only ends a <<- doc.
    ins = only("RUN <<EOF\nEOF \n\tEOF\nEOF\n")
    assert ins.heredocs[0].content == "EOF \n\tEOF\n"


@pytest.mark.parametrize(
    "line",
    ['RUN echo "a<<b"', "RUN cat <<< word", "RUN echo $((1<<2))", 'RUN ["cat", "<<EOF"]'],
)
def test_not_heredocs(line: str) -> None:
    only(line)


# --- key/value instructions -----------------------------------------------------------


@pytest.mark.parametrize(
    ("line", "env", "pairs"),
    [
        # The reference's ENV examples.
        ('ENV MY_NAME="John Doe"', {}, [("MY_NAME", "John Doe")]),
        ("ENV MY_DOG=Rex\\ The\\ Dog", {}, [("MY_DOG", "Rex The Dog")]),
        ("ENV MY_CAT=fluffy", {}, [("MY_CAT", "fluffy")]),
        (
            'ENV MY_NAME="John Doe" MY_DOG=Rex\\ The\\ Dog \\\n    MY_CAT=fluffy',
            {},
            [("MY_NAME", "John Doe"), ("MY_DOG", "Rex The Dog"), ("MY_CAT", "fluffy")],
        ),
        # The legacy form: the whole rest is the value.
        ("ENV MY_VAR my-value", {}, [("MY_VAR", "my-value")]),
        ("ENV ONE TWO= THREE=world", {}, [("ONE", "TWO= THREE=world")]),
        ('ENV GREETING "hello  world"', {}, [("GREETING", "hello  world")]),
        # Expansion: every pair sees the environment from before the instruction.
        ("ENV abc=bye def=$abc", {"abc": "hello"}, [("abc", "bye"), ("def", "hello")]),
        ("ENV ghi=$abc", {"abc": "hello"}, [("ghi", "hello")]),
        ("ENV PATH=/app/bin:$PATH", {"PATH": "/bin"}, [("PATH", "/app/bin:/bin")]),
        ("ENV a='$literal' b=\"$x\"", {"x": "1"}, [("a", "$literal"), ("b", "1")]),
        ("ENV empty=", {}, [("empty", "")]),
        ('ENV e=""', {}, [("e", "")]),
        # LABEL has the same forms.
        (
            'LABEL "com.example.vendor"="ACME Incorporated"',
            {},
            [("com.example.vendor", "ACME Incorporated")],
        ),
        (
            'LABEL version=1.0 description="multi\\\nline"',
            {},
            [("version", "1.0"), ("description", "multiline")],
        ),
        (
            'LABEL multi.label1="value1" multi.label2="value2" other="value3"',
            {},
            [("multi.label1", "value1"), ("multi.label2", "value2"), ("other", "value3")],
        ),
        ("LABEL version=$V", {"V": "2"}, [("version", "2")]),
    ],
)
def test_parse_key_values(line: str, env: dict[str, str], pairs: list[tuple[str, str]]) -> None:
    assert parse_key_values(only(line), env) == pairs


def test_parse_key_values_with_backtick_escape() -> None:
    cf = parse("# escape=`\nFROM a\nENV dir=C:\\app name=a`ce\n")
    (env,) = cf.stages[0].instructions
    assert parse_key_values(env, {}) == [("dir", "C:\\app"), ("name", "ace")]


def test_expansion_errors_carry_the_location() -> None:
    with pytest.raises(InvalidInput, match="^Containerfile:2: need: must be set"):
        parse_key_values(only('ENV x="${need:?must be set}"'), {})


@pytest.mark.parametrize(
    ("line", "env", "declared"),
    [
        ("ARG user1", {}, [("user1", None)]),
        ("ARG buildno=1", {}, [("buildno", "1")]),
        ("ARG user1=someuser buildno", {}, [("user1", "someuser"), ("buildno", None)]),
        ('ARG msg="hello world"', {}, [("msg", "hello world")]),
        ("ARG empty=", {}, [("empty", "")]),
        ("ARG v=${BASE:-1.0}-x", {"BASE": "2"}, [("v", "2-x")]),
    ],
)
def test_parse_args(line: str, env: dict[str, str], declared: list[tuple[str, str | None]]) -> None:
    ins = only(line)
    assert parse_args(ins, env) == declared
    if len(declared) == 1:
        assert parse_arg(ins, env) == declared[0]


def test_parse_arg_refuses_several() -> None:
    with pytest.raises(InvalidInput, match="^Containerfile:2: this ARG declares several"):
        parse_arg(only("ARG a b"), {})


def test_split_words() -> None:
    assert split_words(only('COPY "my file" other /dst/')) == ['"my file"', "other", "/dst/"]
    assert split_words(only('COPY ["my file", "/dst/"]')) == ["my file", "/dst/"]
    assert split_words(only("EXPOSE 80/tcp  443/udp")) == ["80/tcp", "443/udp"]


# --- HEALTHCHECK, ONBUILD, MAINTAINER --------------------------------------------------


def test_healthcheck_forms() -> None:
    ins = only("HEALTHCHECK --interval=5m --timeout=3s CMD curl -f http://localhost/ || exit 1")
    assert ins.args == ("CMD", "curl -f http://localhost/ || exit 1")
    hc = healthcheck(ins)
    assert hc.test == ("CMD-SHELL", "curl -f http://localhost/ || exit 1")
    assert hc.to_json() == {
        "Test": ["CMD-SHELL", "curl -f http://localhost/ || exit 1"],
        "Interval": 300_000_000_000,
        "Timeout": 3_000_000_000,
    }
    ins = only(
        'HEALTHCHECK --start-period=1m30s --start-interval=5s --retries=4 CMD ["/check", "-q"]'
    )
    assert ins.json_form and ins.args == ("CMD", "/check", "-q")
    hc = healthcheck(ins)
    assert hc.test == ("CMD", "/check", "-q")
    assert (hc.start_period, hc.start_interval, hc.retries) == (90_000_000_000, 5_000_000_000, 4)
    none = only("healthcheck none")
    assert none.args == ("NONE",) and healthcheck(none).to_json() == {"Test": ["NONE"]}


@pytest.mark.parametrize(
    ("text", "ns"),
    [
        ("0", 0),
        ("1s", 10**9),
        ("1.5h", 5400 * 10**9),
        ("1m30s", 90 * 10**9),
        ("300ms", 3 * 10**8),
        ("10us", 10_000),
        ("7ns", 7),
        (".5s", 5 * 10**8),
    ],
)
def test_parse_duration(text: str, ns: int) -> None:
    assert parse_duration(text) == ns


@pytest.mark.parametrize("text", ["", "5", "1d", "s", "1s2", "-1s"])
def test_parse_duration_bad(text: str) -> None:
    with pytest.raises(ValueError):
        parse_duration(text)


def test_onbuild_keeps_the_trigger_text() -> None:
    ins = only("ONBUILD   ADD . /app/src")
    assert ins.args == ("ADD . /app/src",)
    ins = only("onbuild RUN --mount=type=cache,target=/c \\\n    make $TARGET")
    assert ins.args == ("RUN --mount=type=cache,target=/c     make $TARGET",)
    assert dict(ins.flags) == {}


def test_maintainer_is_accepted_with_a_warning() -> None:
    cf = parse("FROM a\nMAINTAINER Jane <j@example.com>\n")
    assert cf.stages[0].instructions[0].args == ("Jane <j@example.com>",)
    assert cf.warnings == ("Containerfile: line 2: MAINTAINER is deprecated, use a LABEL",)


def test_a_realistic_file() -> None:
    cf: Containerfile = parse(
        "# syntax=docker/dockerfile:1\n"
        "ARG ALPINE=3.20\n"
        "FROM alpine:${ALPINE} AS base\n"
        "RUN apk add --no-cache busybox-extras\n"
        "\n"
        "FROM base\n"
        "COPY httpd.conf /etc/httpd.conf\n"
        "COPY --chmod=0644 index.html /www/\n"
        "EXPOSE 8080\n"
        'ENTRYPOINT ["httpd", "-f", "-p", "8080", "-h", "/www"]\n'
    )
    assert [s.base for s in cf.stages] == ["alpine:${ALPINE}", "base"]
    assert [i.cmd for i in cf.stages[1].instructions] == ["COPY", "COPY", "EXPOSE", "ENTRYPOINT"]
    assert cf.stages[1].instructions[1].flags == {"chmod": "0644"}
    assert cf.stages[1].instructions[3].location == "Containerfile:10"


def test_parse_instruction_for_onbuild_triggers() -> None:
    trigger = only("ONBUILD COPY --chown=1:1 . /app").args[0]
    ins = parse_instruction(trigger, "Containerfile", 9)
    assert (ins.cmd, ins.args, dict(ins.flags), ins.location) == (
        "COPY",
        (". /app",),
        {"chown": "1:1"},
        "Containerfile:9",
    )
    with pytest.raises(InvalidInput, match="^base:3: unknown instruction: NOPE"):
        parse_instruction("NOPE x", "base", 3)
