"""lamina.server: an OCI distribution-spec 1.1 registry over the local store.

One content store: a blob is on disk once however many repositories hold it, and the
repositories are the store's own tags under the default registry — ``lamina serve``
serves what ``lamina build`` made, and a push lands as a local image.

    app.py        routing, auth checks, errors, lifespan (``Registry``, ``create_app``)
    blobs.py      blob GET/HEAD/DELETE and uploads (monolithic, chunked, mounts)
    manifests.py  manifest GET/HEAD/PUT/DELETE; recording pushes as store images
    discovery.py  tags list, catalog, referrers
    uploads.py    upload sessions over the store's ingest area (movable between replicas)
    metadata.py   the metadata interface (``Db``, ``Lease``) and its errors
    schema.py     every table, once for SQLite and PostgreSQL; numbered migrations
    state.py      every query of the registry's metadata (``RegistryState``)
    meta_sqlite.py, meta_pg.py   the two databases (the store's SQLite; PostgreSQL replicas)
    leases.py     the rolling store lease (SQLite); replicas' leases are in meta_pg.py
    gc.py         ``lamina serve gc``: online gc across replicas
    auth.py       htpasswd, bearer tokens (HS256), the access policy
    config.py     ``ServerConfig`` and its TOML file
    run.py        serving it with uvicorn (``lamina serve``)
"""

from lamina.server.app import Registry, create_app
from lamina.server.config import ServerConfig, load_config

__all__ = ["Registry", "ServerConfig", "create_app", "load_config"]
