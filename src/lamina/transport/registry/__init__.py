"""The registry client: push, pull and copy with any OCI distribution-spec registry.

    options.py   RegistryOptions, Credentials
    errors.py    RegistryError (status + code from the error body), NotFound/Unsupported twins
    auth.py      credentials files, WWW-Authenticate parsing, the bearer/basic dance
    client.py    RegistryClient: base URL, TLS, retries with backoff, one send()
    source.py    RegistrySource (ImageSource), BlobStream (ranged resume)
    sink.py      RegistrySink (ImageSink): HEAD, mount, monolithic/chunked upload, manifests
    login.py     login / logout
    wire.py      HTTP/1.1 on http.client: pooled connections, sendfile bodies, proxies

A pull is ``copy_image(RegistrySource(ref), desc, StoreTransport(store), names)``; a push
is the same the other way round.  The one place that wires them for users (and tests) is
``lamina.transport.transfer``.  Parallel blobs come from ``CopyOptions.jobs``.
"""

from lamina.transport.registry.auth import (
    auth_key,
    docker_config_path,
    lamina_auth_path,
    lookup_credentials,
)
from lamina.transport.registry.client import RegistryClient, is_loopback, registry_base_url
from lamina.transport.registry.errors import RegistryError, RegistryNotFound, RegistryUnsupported
from lamina.transport.registry.login import check_login, login, logout
from lamina.transport.registry.options import Credentials, RegistryOptions
from lamina.transport.registry.sink import BlobPush, RegistrySink
from lamina.transport.registry.source import RegistrySource

__all__ = [
    "BlobPush",
    "Credentials",
    "RegistryClient",
    "RegistryError",
    "RegistryNotFound",
    "RegistryOptions",
    "RegistrySink",
    "RegistrySource",
    "RegistryUnsupported",
    "auth_key",
    "check_login",
    "docker_config_path",
    "is_loopback",
    "lamina_auth_path",
    "login",
    "logout",
    "lookup_credentials",
    "registry_base_url",
]
