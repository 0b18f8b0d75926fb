"""Mutations of an image as pure functions over configs and manifests: rebase and
squash (the image room holds mutations, as ggcr's ``mutate``).  Nothing here reads or
writes a blob; ``lamina.build.rebase`` and ``lamina.build.squash`` move the bytes.

Rebase (ggcr ``mutate.Rebase``, ``crane rebase``): an image's bottom layers are its old
base's, compared by diff_id; they are replaced by the new base's layers, the image's own
layers are kept as they are (the same descriptors, so the same blobs), and the config is
rewritten:

* ``rootfs.diff_ids``: the new base's, then the image's own;
* ``history``: the new base's entries, one empty entry telling the rebase ("rebased from
  OLD@digest onto NEW@digest"; a previous rebase's entry is replaced), then the image's
  own entries.  The old base's part of the history is its first ``len(old.history)``
  entries when they are the old base's; else (another builder rewrote them) everything
  up to the entry that made the old base's last layer, and the empty entries the old
  base has after its own last layer.  A history that does not name one non-empty entry
  per layer is refused (``InvalidManifest``): the counts would no longer agree;
* platform (architecture, os, variant, os.version) from the new base, which must be of
  the old base's os and architecture; ``created`` the later of the image's and the new
  base's;
* the runtime config: a field the image set itself is kept, one it inherited from the
  old base is taken from the new base (or dropped when the new base has none).  The
  image set a field itself when its own history has the instruction that sets it
  (``ENV``, ``LABEL``, ``EXPOSE``, ``VOLUME``, ``CMD``, ``ENTRYPOINT``, ``WORKDIR``,
  ``USER``, ``STOPSIGNAL``, ``HEALTHCHECK``, ``SHELL``, ``ONBUILD``; BuildKit's
  ``created_by`` or the classic builder's ``/bin/sh -c #(nop) …``), or when its value
  differs from the old base's (a tool that left no history set it).  ``Env``,
  ``Labels``, ``ExposedPorts`` and ``Volumes`` are decided key by key: the new base's
  keys in its order, the image's own keys over them, new ones after.  An image that set
  ``ENTRYPOINT`` owns ``Cmd`` too (the Dockerfile reference: ENTRYPOINT resets a CMD
  inherited from the base).  A value the image computed from the old base's
  (``ENV PATH=/app:$PATH``) is the image's own, expanded at build time: kept as built.

Squash: layers ``start..end`` become one; their history entries stay, each but the
last marked ``empty_layer`` with a comment naming the layer they went into, the last
one commented "squashed layers N..M".
"""

from __future__ import annotations

import contextlib
import copy
import datetime as _dt
import json
import shlex
from collections.abc import Mapping, Sequence
from typing import Any

from lamina.digest import Digest
from lamina.errors import InvalidInput, InvalidManifest
from lamina.image import mediatypes as mt
from lamina.image.config import History, ImageConfig, parse_config
from lamina.image.manifest import Descriptor, Manifest, build_manifest, dumps

BASE_NAME = "org.opencontainers.image.base.name"      # image-spec annotations.md
BASE_DIGEST = "org.opencontainers.image.base.digest"
REBASE_CREATED_BY = "lamina rebase"
SQUASH_CREATED_BY = "lamina squash"

_SCALARS = ("Entrypoint", "Cmd", "WorkingDir", "User", "StopSignal", "Healthcheck", "Shell",
            "OnBuild")
_MAPS = ("Env", "Labels", "ExposedPorts", "Volumes")
_INSTRUCTIONS = {"ENV": "Env", "LABEL": "Labels", "EXPOSE": "ExposedPorts",
                 "VOLUME": "Volumes", "CMD": "Cmd", "ENTRYPOINT": "Entrypoint",
                 "WORKDIR": "WorkingDir", "USER": "User", "STOPSIGNAL": "StopSignal",
                 "HEALTHCHECK": "Healthcheck", "SHELL": "Shell", "ONBUILD": "OnBuild"}


# -- helpers ----------------------------------------------------------------------------
def layer_entries(config: ImageConfig, what: str) -> list[int]:
    """For each layer, the index of the history entry that made it; [] when the
    config has no history; ``InvalidManifest`` when the counts disagree."""
    made = [i for i, h in enumerate(config.history) if not h.empty_layer]
    if not config.history:
        return []
    if len(made) != len(config.diff_ids):
        raise InvalidManifest(f"{what}: its history names {len(made)} layers but it has "
                              f"{len(config.diff_ids)}")
    return made


def _with(image: ImageConfig, diff_ids: Sequence[Digest], history: Sequence[History],
          **top: Any) -> ImageConfig:
    """``config`` with new diff_ids and history (and top-level fields: None removes);
    every other key stays where it was, so the document reads as before."""
    doc = copy.deepcopy(image.doc)
    for key, value in top.items():
        if value is None:
            doc.pop(key, None)
        else:
            doc[key] = value
    rootfs = doc.setdefault("rootfs", {"type": "layers"})
    rootfs["diff_ids"] = [str(d) for d in diff_ids]
    if history or "history" in doc:
        doc["history"] = [h.to_json() for h in history]
    return parse_config(dumps(doc))


def _family(manifest_type: str, layers: Sequence[Descriptor]
            ) -> tuple[str, list[Descriptor]]:
    """The manifest type and layer descriptors relabelled to one family: a Docker
    manifest names Docker layer types, an OCI one OCI types (the same bytes; skopeo
    converts so).  A layer with no Docker twin (zstd) makes the manifest OCI."""
    if manifest_type == mt.DOCKER_MANIFEST and all(
            mt.to_docker(d.media_type) in (mt.DOCKER_LAYER, mt.DOCKER_LAYER_GZIP,
                                           mt.DOCKER_LAYER_FOREIGN) for d in layers):
        return manifest_type, [_relabel(d, mt.to_docker(d.media_type)) for d in layers]
    return mt.OCI_MANIFEST, [_relabel(d, mt.to_oci(d.media_type)) for d in layers]


def _relabel(d: Descriptor, media_type: str) -> Descriptor:
    if media_type == d.media_type:
        return d
    return Descriptor(media_type, d.digest, d.size, d.annotations, d.platform, d.urls,
                      d.artifact_type)


def new_manifest(manifest: Manifest, config: ImageConfig, layers: Sequence[Descriptor],
                 annotations: Mapping[str, str] | None = None) -> Manifest:
    """A manifest like ``manifest`` (type, annotations) naming ``config`` and ``layers``."""
    media_type, relabelled = _family(manifest.media_type, layers)
    config_type = manifest.config.media_type
    config_type = mt.to_docker(config_type) if media_type == mt.DOCKER_MANIFEST \
        else mt.to_oci(config_type)
    config_desc = Descriptor(config_type, config.digest, len(config.raw))
    merged = {**manifest.annotations, **(annotations or {})}
    return build_manifest(config_desc, relabelled, media_type, merged or None)


def _time(text: str | None) -> _dt.datetime | None:
    if not text:
        return None
    with contextlib.suppress(ValueError):
        t = _dt.datetime.fromisoformat(text.replace("Z", "+00:00"))
        return t if t.tzinfo else t.replace(tzinfo=_dt.UTC)
    return None


# -- rebase -------------------------------------------------------------------------------
def check_based_on(image: ImageConfig, old: ImageConfig, image_name: str,
                   old_name: str) -> None:
    """``InvalidInput`` (one line) unless ``image``'s bottom layers are ``old``'s."""
    if not old.diff_ids:
        raise InvalidInput(f"{old_name} has no layers: it cannot be the base of {image_name}")
    if len(old.diff_ids) > len(image.diff_ids):
        raise InvalidInput(f"{image_name} is not built on {old_name}: the base has "
                           f"{len(old.diff_ids)} layers, the image only "
                           f"{len(image.diff_ids)}")
    for i, (a, b) in enumerate(zip(image.diff_ids, old.diff_ids, strict=False)):
        if a != b:
            raise InvalidInput(f"{image_name} is not built on {old_name}: layer {i + 1} is "
                               f"{a.short} in the image, {b.short} in the base")


def _base_history_end(image: ImageConfig, old: ImageConfig, image_made: list[int]) -> int:
    """How many of ``image``'s history entries are its old base's."""
    n = len(old.history)
    if n and image.history[:n] == old.history:
        return n
    if not image_made:
        return 0
    end = image_made[len(old.diff_ids) - 1] + 1
    trailing = 0
    for h in reversed(old.history):
        if not h.empty_layer:
            break
        trailing += 1
    while trailing and end < len(image.history) and image.history[end].empty_layer:
        end += 1
        trailing -= 1
    return end


def _instruction(created_by: str | None) -> tuple[str, str] | None:
    """(INSTRUCTION, arguments) of a history entry, BuildKit's or the classic builder's."""
    text = (created_by or "").strip()
    if text.startswith("/bin/sh -c #(nop)"):
        text = text[len("/bin/sh -c #(nop)"):].strip()
    word, _, rest = text.partition(" ")
    word = word.upper()
    return (word, rest.strip()) if word in _INSTRUCTIONS else None


def _keys(word: str, args: str) -> set[str] | None:
    """The keys an ENV/LABEL/EXPOSE/VOLUME sets (None: all of them, when unreadable)."""
    try:
        if word == "VOLUME" and args.startswith("["):
            return {str(v) for v in json.loads(args)}
        tokens = shlex.split(args)
    except ValueError:
        return None
    if word == "EXPOSE":
        return {t if "/" in t else f"{t}/tcp" for t in tokens}
    if word == "VOLUME":
        return set(tokens)
    if tokens and "=" not in tokens[0]:
        return {tokens[0]}                          # the legacy "ENV KEY value" form
    return {t.split("=", 1)[0] for t in tokens if "=" in t}


def _env_map(value: Any) -> dict[str, str]:
    out: dict[str, str] = {}
    for item in value if isinstance(value, list) else []:
        if isinstance(item, str):
            k, _, v = item.partition("=")
            out[k] = v
    return out


def _as_map(key: str, value: Any) -> dict[str, Any]:
    if key == "Env":
        return _env_map(value)
    return dict(value) if isinstance(value, dict) else {}


def rebase_runtime(image: Mapping[str, Any], old: Mapping[str, Any], new: Mapping[str, Any],
                   own_history: Sequence[History]) -> dict[str, Any]:
    """The runtime config (``config``) of the rebased image, by the rule of this
    module's docstring."""
    set_by: dict[str, set[str] | None] = {}    # field -> keys set (None: all/scalar)
    for h in own_history:
        found = _instruction(h.created_by)
        if found is None:
            continue
        word, args = found
        field = _INSTRUCTIONS[word]
        if field in _MAPS:
            keys = _keys(word, args)
            known = set_by.get(field, set())
            set_by[field] = None if keys is None or known is None else known | keys
        else:
            set_by[field] = None
    if "Entrypoint" in set_by:
        set_by["Cmd"] = None
    out = copy.deepcopy(dict(image))
    for field in _SCALARS:
        own = field in set_by or image.get(field) != old.get(field)
        if own:
            continue
        if field in new:
            out[field] = copy.deepcopy(new[field])
        else:
            out.pop(field, None)
    for field in _MAPS:
        mine, theirs, nxt = (_as_map(field, x.get(field)) for x in (image, old, new))
        declared = set_by.get(field, set())
        result = dict(nxt)
        for k, v in mine.items():
            if declared is None or k in declared or k not in theirs or theirs[k] != v:
                result[k] = v
        if not result and field not in image and field not in new:
            continue
        if field == "Env":
            out[field] = [f"{k}={v}" for k, v in result.items()]
        else:
            out[field] = result
    return out


def rebase_config(image: ImageConfig, old: ImageConfig, new: ImageConfig,
                  comment: str) -> ImageConfig:
    """The config of ``image`` moved from ``old`` onto ``new`` (checked by
    ``check_based_on`` first)."""
    if (new.platform.os, new.platform.architecture) != (old.platform.os,
                                                        old.platform.architecture):
        raise InvalidInput(f"the new base is {new.platform}, the old base "
                           f"{old.platform}: a rebase keeps the platform")
    image_made = layer_entries(image, "the image")
    layer_entries(new, "the new base")
    end = _base_history_end(image, old, image_made)
    own = list(image.history[end:])
    if own and own[0].created_by == REBASE_CREATED_BY and own[0].empty_layer:
        own = own[1:]          # the previous rebase's note: this one replaces it
    created = image.created
    t_image, t_new = _time(image.created), _time(new.created)
    if t_new is not None and (t_image is None or t_new > t_image):
        created = new.created
    note = History(created=created, created_by=REBASE_CREATED_BY, comment=comment,
                   empty_layer=True)
    diff_ids = [*new.diff_ids, *image.diff_ids[len(old.diff_ids):]]
    # A config without history gets one entry per layer: the counts must agree.
    base = list(new.history) or [History(comment="no history") for _ in new.diff_ids]
    if not image.history:
        own = [History(comment="no history") for _ in image.diff_ids[len(old.diff_ids):]]
    history = [*base, note, *own]
    runtime = rebase_runtime(image.container_config, old.container_config,
                             new.container_config, own)
    plat = new.platform
    return _with(image, diff_ids, history, created=created, config=runtime,
                 architecture=plat.architecture, os=plat.os, variant=plat.variant,
                 **{"os.version": plat.os_version or new.doc.get("os.version")})


# -- squash -------------------------------------------------------------------------------
def squash_config(image: ImageConfig, start: int, end: int, diff_id: Digest) -> ImageConfig:
    """``image`` with layers ``start..end-1`` (0-based) replaced by the one ``diff_id``."""
    made = layer_entries(image, "the image")
    first, last = start + 1, end
    history = list(image.history)
    if made:
        for n in range(start, end):
            h = history[made[n]]
            if n < end - 1:
                note = f"squashed into layer {first}"
                history[made[n]] = History(h.created, h.created_by, h.author,
                                           f"{h.comment}; {note}" if h.comment else note,
                                           empty_layer=True)
            else:
                note = f"squashed layers {first}..{last}" if first != last \
                    else f"squashed layer {first}"
                history[made[n]] = History(h.created, h.created_by, h.author,
                                           f"{h.comment}; {note}" if h.comment else note)
    diff_ids = [*image.diff_ids[:start], diff_id, *image.diff_ids[end:]]
    return _with(image, diff_ids, history)
