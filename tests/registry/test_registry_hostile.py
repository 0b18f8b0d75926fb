"""Images a real docker-registry serves that lamina must refuse on pull: one line, the
exit code of its kind, nothing tagged, no blobs left behind."""

from __future__ import annotations

import uuid
from pathlib import Path

from registry_servers import DockerRegistry

from image_surgery import Layout, small_layout, with_deep_value
from lamina.image.jsondoc import MAX_DEPTH
from lamina_testing import Lamina


def _push_layout(lamina: Lamina, layout: Path, registry: DockerRegistry, name: str) -> str:
    """Put the layout's image in the registry as it is (copy never parses a config)."""
    ref = f"{registry.host}/{name}-{uuid.uuid4().hex[:8]}:v1"
    lamina.run("copy", f"oci:{layout}", f"docker://{ref}")
    return ref


def test_pull_of_a_deep_config_is_refused(lamina: Lamina, registry: DockerRegistry,
                                          tmp_path: Path) -> None:
    """#10.3"""
    layout = small_layout(tmp_path)
    img = Layout(layout)
    img.write(config_raw=with_deep_value(img.config))
    ref = _push_layout(lamina, layout, registry, "deep")
    res = lamina.fail("pull", ref)
    assert res.code == 3, res.err
    assert f"nests deeper than {MAX_DEPTH} levels" in res.err, res.err
    assert lamina.run("images", "--json").json() == []
    assert lamina.blob_files() == set()
    lamina.assert_consistent()
