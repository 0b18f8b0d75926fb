"""psycopg and boto3 are optional (``lamina[postgres]``, ``lamina[s3]``): a machine
without them runs every command and a registry on SQLite and local blobs, and a
configuration that needs one says which extra to install, in one line (exit 7)."""

from __future__ import annotations

from pathlib import Path

from lamina_testing import Lamina


def _without(tmp_path: Path, *modules: str) -> dict[str, str]:
    """An environment in which importing ``modules`` fails as if not installed."""
    shadow = tmp_path / "shadow"
    for name in modules:
        (shadow / name).mkdir(parents=True)
        (shadow / name / "__init__.py").write_text(
            f"raise ModuleNotFoundError(\"No module named '{name}'\", name={name!r})\n")
    return {"PYTHONPATH": str(shadow)}


def test_serve_gc_on_sqlite_needs_neither(tmp_path: Path) -> None:
    lamina = Lamina(tmp_path / "root", tmp_path)
    env = _without(tmp_path, "psycopg", "psycopg_pool", "boto3", "botocore")
    res = lamina.run("serve", "gc", "--root", tmp_path / "root", "--json", env=env)
    assert '"blobs_removed": []' in res.out


def test_postgres_metadata_without_psycopg_names_the_extra(tmp_path: Path) -> None:
    lamina = Lamina(tmp_path / "root", tmp_path)
    cfg = tmp_path / "serve.toml"
    cfg.write_text('[metadata]\nurl = "postgresql://lamina@127.0.0.1:1/registry"\n')
    env = _without(tmp_path, "psycopg", "psycopg_pool")
    res = lamina.run("serve", "gc", "--root", tmp_path / "root", "--config", cfg,
                     check=False, env=env)
    assert res.code == 7 and "Traceback" not in res.err, res.err
    assert res.err.strip().splitlines() == [
        "lamina: [metadata] url names PostgreSQL, which needs psycopg: "
        "pip install 'lamina[postgres]'"]


def test_s3_storage_without_boto3_names_the_extra(tmp_path: Path) -> None:
    lamina = Lamina(tmp_path / "root", tmp_path)
    cfg = tmp_path / "serve.toml"
    cfg.write_text('[storage]\ndriver = "s3"\nbucket = "b"\nendpoint = "http://127.0.0.1:1"\n'
                   'access_key = "a"\nsecret_key = "s"\n')
    env = _without(tmp_path, "boto3", "botocore")
    res = lamina.run("serve", "gc", "--root", tmp_path / "root", "--config", cfg,
                     check=False, env=env)
    assert res.code == 7 and "Traceback" not in res.err, res.err
    assert res.err.strip().splitlines() == [
        "lamina: [storage] driver = \"s3\" needs boto3: pip install 'lamina[s3]'"]
