"""``lamina run``'s sandbox options: capabilities, seccomp, ``--privileged``, ``-p``.

Kept apart from cmd_run.py so the command takes them as one group: ``@sandbox_options``
on the command, ``**sandbox`` in its signature, ``sandbox_run_options(sandbox)`` into
``RunOptions``.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, TypeVar

from lamina.cli.format import flag, option

F = TypeVar("F", bound=Callable[..., Any])


def sandbox_options(fn: F) -> F:
    decorators = [
        option("-p", "--publish", "publish", multiple=True, metavar="[IP:][HOST:]CTR[/PROTO]",
               help="Forward a host port (any free one when HOST is left out) to a port "
               "of the container's private network; tcp (default) or udp."),
        option("--network", "network", default=None,
               help="private (own namespace, lo only, -p ports forwarded; the default "
               "with -p), none (the same, nothing published; the default) or host."),
        option("--cap-add", "cap_add", multiple=True, metavar="CAP",
               help="Add a capability to Docker's default set (ALL: every one)."),
        option("--cap-drop", "cap_drop", multiple=True, metavar="CAP",
               help="Drop a capability from Docker's default set (ALL: every one)."),
        option("--security-opt", "security_opt", multiple=True, metavar="OPT",
               help="no-new-privileges, seccomp=unconfined or seccomp=PROFILE.json "
               "(Docker's profile format; default: Docker's default profile)."),
        flag("--privileged", help="Every capability, no seccomp filter, no masked /proc "
             "paths: for those who mean it."),
    ]
    for decorate in reversed(decorators):
        fn = decorate(fn)
    return fn


def sandbox_run_options(values: dict[str, Any],
                        announce: Callable[[str], None] | None = None) -> dict[str, Any]:
    """``RunOptions`` fields from the options above (checked: bad ones raise
    ``InvalidInput``).  ``announce`` hears where ports were published when a host port
    was left to lamina to choose."""
    from lamina.errors import InvalidInput
    from lamina.run.portfwd import PortMapping, parse_port
    from lamina.run.security import security_from_options

    ports = list(values.get("publish") or [])
    for p in ports:
        parse_port(p)   # bad forms fail before anything starts
    network = values.get("network") or ("private" if ports else "none")
    if network not in ("none", "private", "host"):
        raise InvalidInput(f"unknown network {network!r}: choose none, private or host")
    security = security_from_options(bool(values.get("privileged")),
                                     values.get("cap_add") or (), values.get("cap_drop") or (),
                                     values.get("security_opt") or ())

    def published(mappings: list[PortMapping]) -> None:
        if announce is not None and any(parse_port(p).host_port == 0 for p in ports):
            for m in mappings:
                announce(str(m))

    return {"ports": ports, "network": network, "security": security,
            "on_published": published}
