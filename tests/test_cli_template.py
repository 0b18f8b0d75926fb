"""The ``--format`` mini-language (issue 10, item 21): Go text/template's common cases
as Docker users write them, parsed and never evaluated as Python."""

from __future__ import annotations

import pytest

from lamina.cli.template import Format, TemplateError

DOC = {"Id": "sha256:ab", "RepoTags": ["a:1", "b:2"], "Size": 10, "Ok": True,
       "Config": {"Env": ["A=1", "B=2"], "Labels": {"team": "web"}, "Cmd": None}}


@pytest.mark.parametrize(("template", "want"), [
    ("{{.Id}}", "sha256:ab"),
    ("{{ .Id }}", "sha256:ab"),
    ("id={{.Id}}!", "id=sha256:ab!"),
    ("{{.Config.Env}}", "[A=1 B=2]"),
    ("{{.Config.Labels}}", "map[team:web]"),
    ("{{.Config.Labels.team}} {{.Config.Labels.other}}", "web <no value>"),
    ("{{.Size}} {{.Ok}}", "10 true"),
    ("{{json .Config.Env}}", '["A=1","B=2"]'),
    ("{{json .Config.Cmd}}", "null"),
    ("{{index .RepoTags 1}}", "b:2"),
    ('{{index .Config.Labels "team"}}', "web"),
    ('{{join .RepoTags ", "}}', "a:1, b:2"),
    ("{{upper .Config.Labels.team}}", "WEB"),
    ("{{.Id}}\\t{{.Size}}", "sha256:ab\t10"),
])
def test_fields_and_functions(template: str, want: str) -> None:
    assert Format.parse(template).lines([DOC], {}) == [want]


def test_json_word_and_table() -> None:
    assert Format.parse("json").lines([DOC], {}) == Format.parse("{{json .}}").lines([DOC], {})
    rows = [{"ID": "abc", "Size": "1kB"}, {"ID": "abcdef", "Size": "2MB"}]
    got = Format.parse("table {{.ID}}\\t{{.Size}}").lines(rows, {"ID": "IMAGE ID"})
    assert got == ["IMAGE ID   SIZE", "abc        1kB", "abcdef     2MB"]


@pytest.mark.parametrize(("template", "message"), [
    ("{{.Nope}}", 'template: :1:2: executing "" at <.Nope>: can\'t evaluate field Nope'),
    ("x {{.Config.Nope}}", "template: :1:4: executing \"\" at <.Config.Nope>: can't "
                           "evaluate field Nope"),
    ("{{.Id.X}}", "can't evaluate field X"),
    ("{{__import__ \"os\"}}", 'function "__import__" not defined'),
    ("{{.__class__}}", "can't evaluate field __class__"),
    ("{{index .RepoTags 9}}", "index of 9 out of range"),
    ("{{.Id", "unclosed action"),
    ("{{}}", "missing value for command"),
    ("{{.Id .Size}}", "can't give argument to non-function"),
])
def test_errors_are_one_line(template: str, message: str) -> None:
    with pytest.raises(TemplateError) as exc:
        Format.parse(template).lines([DOC], {})
    assert message in str(exc.value) and "\n" not in str(exc.value)
    assert exc.value.exit_code == 3
