"""``login`` and ``logout``: check credentials against a registry, then keep them."""

from __future__ import annotations

from dataclasses import replace

from lamina.transport.registry.auth import remove_credentials, store_credentials
from lamina.transport.registry.client import RegistryClient
from lamina.transport.registry.errors import RegistryError
from lamina.transport.registry.options import Credentials, RegistryOptions
from lamina.transport.registry.wire import HttpClient


def check_login(registry: str, creds: Credentials, opts: RegistryOptions = RegistryOptions(),
                client: HttpClient | None = None) -> None:
    """GET /v2/ with the auth dance, as ``docker login`` does; raises on failure.  For a
    bearer registry the token service judges the credentials (a token for no scope)."""
    rc = RegistryClient(registry, replace(opts, credentials=creds), client)
    try:
        resp = rc.send("GET", "/v2/", what="login")
        resp.close()
    except RegistryError as e:
        if e.status != 401:
            raise
        # The general 401 line says "check lamina login", which is what is running:
        # name the cause as docker login does.
        raise RegistryError(f"login to {registry} failed: unauthorized: incorrect username "
                            "or password", registry=registry, status=401, code=e.code) from None
    finally:
        rc.close()


def login(registry: str, username: str, password: str,
          opts: RegistryOptions = RegistryOptions(), client: HttpClient | None = None
          ) -> None:
    """Verify ``username``/``password`` against ``registry`` and store them (0600) in
    lamina's credentials file.  Raises RegistryError (bad credentials) or
    TransportError (cannot connect) and stores nothing then."""
    creds = Credentials(username, password)
    check_login(registry, creds, opts, client)
    store_credentials(registry, creds)


def logout(registry: str) -> bool:
    """Forget lamina's stored credentials for ``registry``; False if there were none
    (Docker's config is left alone: it is Docker's)."""
    return remove_credentials(registry)
