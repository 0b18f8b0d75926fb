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


def test_new_manifest_keeps_the_family_of_the_image() -> None:
    """A Docker manifest names Docker layer types (the same bytes relabelled); a layer
    with no Docker twin (zstd) makes the manifest its OCI twin, as skopeo converts."""
    from lamina.digest import Digest
    from lamina.image import mediatypes as mt
    from lamina.image.config import build_config
    from lamina.image.manifest import Descriptor, Platform, build_manifest
    from lamina.image.mutate import new_manifest

    def desc(media_type: str, n: int) -> Descriptor:
        return Descriptor(media_type, Digest.from_bytes(bytes([n])), n + 1)

    config = build_config([], [], Platform("amd64", "linux"))
    docker = build_manifest(desc(mt.DOCKER_CONFIG, 0), [desc(mt.DOCKER_LAYER_GZIP, 1)],
                            mt.DOCKER_MANIFEST, {"keep": "me"})
    m = new_manifest(docker, config, [desc(mt.OCI_LAYER_GZIP, 2), desc(mt.DOCKER_LAYER_GZIP, 1)],
                     {"org.opencontainers.image.base.name": "x"})
    assert m.media_type == mt.DOCKER_MANIFEST and m.config.media_type == mt.DOCKER_CONFIG
    assert [d.media_type for d in m.layers] == [mt.DOCKER_LAYER_GZIP] * 2
    assert dict(m.annotations) == {"keep": "me", "org.opencontainers.image.base.name": "x"}
    z = new_manifest(docker, config, [desc(mt.OCI_LAYER_ZSTD, 3), desc(mt.DOCKER_LAYER_GZIP, 1)])
    assert z.media_type == mt.OCI_MANIFEST and z.config.media_type == mt.OCI_CONFIG
    assert [d.media_type for d in z.layers] == [mt.OCI_LAYER_ZSTD, mt.OCI_LAYER_GZIP]
    assert z.config.digest == config.digest and z.layers[1].digest == m.layers[1].digest
