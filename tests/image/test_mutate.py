"""The rebase rule for the runtime config (image/mutate.py): what the image set itself is
kept, what it inherited from the old base comes from the new one."""

from __future__ import annotations

from lamina.image.config import History
from lamina.image.mutate import rebase_runtime

OLD = {"Env": ["PATH=/usr/bin", "LANG=C", "GONE=1"], "Cmd": ["sh"], "WorkingDir": "/",
       "Labels": {"vendor": "old", "version": "1"}, "ExposedPorts": {"80/tcp": {}}}
NEW = {"Env": ["PATH=/usr/local/bin:/usr/bin", "LANG=C.UTF-8", "TZ=UTC"], "Cmd": ["bash"],
       "WorkingDir": "/", "Labels": {"vendor": "new", "version": "2"},
       "ExposedPorts": {"443/tcp": {}}, "StopSignal": "SIGTERM"}


def h(created_by: str) -> History:
    return History(created_by=created_by, empty_layer=True)


def test_inherited_fields_follow_the_new_base() -> None:
    image = {**OLD, "Env": [*OLD["Env"], "APP=1"]}
    out = rebase_runtime(image, OLD, NEW, [h("ENV APP=1")])
    assert out["Env"] == ["PATH=/usr/local/bin:/usr/bin", "LANG=C.UTF-8", "TZ=UTC", "APP=1"]
    assert out["Cmd"] == ["bash"] and out["StopSignal"] == "SIGTERM"
    assert out["Labels"] == {"vendor": "new", "version": "2"}
    assert out["ExposedPorts"] == {"443/tcp": {}}


def test_what_the_image_set_stays_even_when_equal_to_the_old_base() -> None:
    image = {**OLD, "Env": ["PATH=/usr/bin", "LANG=C", "GONE=1"],
             "Labels": {"vendor": "old", "version": "1", "app": "x"},
             "ExposedPorts": {"80/tcp": {}, "8080/tcp": {}}}
    history = [h('/bin/sh -c #(nop)  CMD ["sh"]'), h("ENV LANG=C"), h("LABEL vendor=old"),
               h("EXPOSE 80")]
    out = rebase_runtime(image, OLD, NEW, history)
    assert out["Cmd"] == ["sh"]                         # set by CMD, though equal to OLD's
    assert out["Env"] == ["PATH=/usr/local/bin:/usr/bin", "LANG=C", "TZ=UTC"]
    assert out["Labels"] == {"vendor": "old", "version": "2", "app": "x"}
    assert out["ExposedPorts"] == {"443/tcp": {}, "80/tcp": {}, "8080/tcp": {}}


def test_entrypoint_owns_cmd_and_values_that_differ_are_own() -> None:
    image = {**OLD, "Entrypoint": ["/app"], "Cmd": None, "WorkingDir": "/srv"}
    out = rebase_runtime(image, OLD, NEW, [h('ENTRYPOINT ["/app"]')])
    assert out["Entrypoint"] == ["/app"] and out["Cmd"] is None
    assert out["WorkingDir"] == "/srv"                  # differs from OLD: set by someone
    no_history = rebase_runtime({**OLD, "Cmd": None, "Entrypoint": ["/app"]}, OLD, NEW, [])
    assert no_history["Cmd"] is None                    # differs from OLD's ["sh"]
