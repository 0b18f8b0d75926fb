"""What a container may do: capabilities, seccomp, no_new_privs, masked /proc paths.

The defaults are Docker's (moby oci/caps/defaults.go, oci/defaults.go,
profiles/seccomp/default.json), and the options are ``docker run``'s:

* ``--cap-add CAP`` / ``--cap-drop CAP`` (with or without ``CAP_``, any case, ``ALL``):
  drops first, then adds, as moby's ``caps.TweakCapabilities`` (``--cap-drop ALL
  --cap-add CHOWN`` leaves CHOWN alone);
* ``--security-opt seccomp=unconfined|PROFILE.json``, ``--security-opt
  no-new-privileges[=true|false]``;
* ``--privileged``: every capability, no seccomp filter, nothing masked or read-only.

The seccomp rules that depend on capabilities are resolved against the final set
(``lamina.run.seccomp``), so ``--cap-add SYS_ADMIN`` allows ``mount`` as in Docker.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from lamina.errors import InvalidInput

# Every capability by number (linux/capability.h).
ALL_CAPS: dict[str, int] = {
    "CAP_CHOWN": 0, "CAP_DAC_OVERRIDE": 1, "CAP_DAC_READ_SEARCH": 2, "CAP_FOWNER": 3,
    "CAP_FSETID": 4, "CAP_KILL": 5, "CAP_SETGID": 6, "CAP_SETUID": 7, "CAP_SETPCAP": 8,
    "CAP_LINUX_IMMUTABLE": 9, "CAP_NET_BIND_SERVICE": 10, "CAP_NET_BROADCAST": 11,
    "CAP_NET_ADMIN": 12, "CAP_NET_RAW": 13, "CAP_IPC_LOCK": 14, "CAP_IPC_OWNER": 15,
    "CAP_SYS_MODULE": 16, "CAP_SYS_RAWIO": 17, "CAP_SYS_CHROOT": 18, "CAP_SYS_PTRACE": 19,
    "CAP_SYS_PACCT": 20, "CAP_SYS_ADMIN": 21, "CAP_SYS_BOOT": 22, "CAP_SYS_NICE": 23,
    "CAP_SYS_RESOURCE": 24, "CAP_SYS_TIME": 25, "CAP_SYS_TTY_CONFIG": 26, "CAP_MKNOD": 27,
    "CAP_LEASE": 28, "CAP_AUDIT_WRITE": 29, "CAP_AUDIT_CONTROL": 30, "CAP_SETFCAP": 31,
    "CAP_MAC_OVERRIDE": 32, "CAP_MAC_ADMIN": 33, "CAP_SYSLOG": 34, "CAP_WAKE_ALARM": 35,
    "CAP_BLOCK_SUSPEND": 36, "CAP_AUDIT_READ": 37, "CAP_PERFMON": 38, "CAP_BPF": 39,
    "CAP_CHECKPOINT_RESTORE": 40,
}

# Docker's default capabilities (moby oci/caps/defaults.go).
DEFAULT_CAPS: frozenset[str] = frozenset({
    "CAP_CHOWN", "CAP_DAC_OVERRIDE", "CAP_FOWNER", "CAP_FSETID", "CAP_KILL", "CAP_SETGID",
    "CAP_SETUID", "CAP_SETPCAP", "CAP_NET_BIND_SERVICE", "CAP_NET_RAW", "CAP_SYS_CHROOT",
    "CAP_MKNOD", "CAP_AUDIT_WRITE", "CAP_SETFCAP",
})

# Paths of /proc and /sys hidden from the container (moby oci/defaults.go
# DefaultLinuxSpec MaskedPaths, /proc/interrupts since Docker 28): a file gets /dev/null
# bound over it, a directory an empty read-only tmpfs.
MASKED_PATHS: tuple[str, ...] = (
    "/proc/asound", "/proc/acpi", "/proc/interrupts", "/proc/kcore", "/proc/keys",
    "/proc/latency_stats", "/proc/timer_list", "/proc/timer_stats", "/proc/sched_debug",
    "/proc/scsi", "/sys/firmware", "/sys/devices/virtual/powercap",
)
# ... and those made read-only (ReadonlyPaths).
READONLY_PATHS: tuple[str, ...] = (
    "/proc/bus", "/proc/fs", "/proc/irq", "/proc/sys", "/proc/sysrq-trigger",
)


@dataclass(frozen=True)
class Security:
    """A container's confinement.  ``seccomp`` is a profile in Docker's format, or None
    for none (unconfined); the default is Docker's default profile."""

    caps: frozenset[str] = DEFAULT_CAPS
    seccomp: Mapping[str, Any] | None = field(default=None, compare=False)
    seccomp_default: bool = True        # Docker's own profile (compiled once, cached)
    no_new_privileges: bool = False
    masked: bool = True                 # MASKED_PATHS hidden, READONLY_PATHS read-only

    @property
    def cap_numbers(self) -> list[int]:
        return sorted(ALL_CAPS[c] for c in self.caps)

    def seccomp_filter(self) -> bytes | None:
        """The compiled BPF program, or None when unconfined."""
        from lamina.run.seccomp import compile_profile, default_filter

        if self.seccomp_default:
            return default_filter(self.caps)
        if self.seccomp is None:
            return None
        return compile_profile(self.seccomp, self.caps)

    def to_record(self) -> dict[str, Any]:
        """As a container's record keeps it (JSON): ``seccomp`` is "default", None
        (unconfined) or the profile itself."""
        return {"caps": sorted(self.caps), "no_new_privileges": self.no_new_privileges,
                "masked": self.masked,
                "seccomp": "default" if self.seccomp_default else (
                    None if self.seccomp is None else dict(self.seccomp))}

    @classmethod
    def from_record(cls, doc: Mapping[str, Any] | None) -> Security:
        """``to_record``'s inverse; a record without one (made before lamina kept it)
        gets the defaults."""
        if not doc:
            return cls()
        profile = doc.get("seccomp")
        return cls(caps=frozenset(doc["caps"]), no_new_privileges=bool(doc["no_new_privileges"]),
                   masked=bool(doc["masked"]), seccomp_default=profile == "default",
                   seccomp=profile if isinstance(profile, dict) else None)


def _cap_name(text: str) -> str:
    name = text.strip().upper()
    if name == "ALL":
        return name
    if not name.startswith("CAP_"):
        name = "CAP_" + name
    if name not in ALL_CAPS:
        raise InvalidInput(f"unknown capability {text!r}")
    return name


def resolve_caps(add: Iterable[str], drop: Iterable[str],
                 base: frozenset[str] = DEFAULT_CAPS) -> frozenset[str]:
    """moby's TweakCapabilities: ``base`` minus drops (ALL: everything), plus adds
    (ALL: everything)."""
    adds = {_cap_name(c) for c in add}
    drops = {_cap_name(c) for c in drop}
    if "ALL" in adds:
        return frozenset(ALL_CAPS)
    caps = set() if "ALL" in drops else set(base) - drops
    return frozenset(caps | adds)


def security_from_options(privileged: bool = False, cap_add: Iterable[str] = (),
                          cap_drop: Iterable[str] = (),
                          security_opts: Iterable[str] = ()) -> Security:
    """``docker run``'s options turned into a ``Security`` (see the module docstring)."""
    nnp = False
    seccomp: Mapping[str, Any] | None = None
    seccomp_default = not privileged
    for opt in security_opts:
        key, sep, value = opt.partition("=")
        if not sep:
            key, sep, value = opt.partition(":")   # the old form, no-new-privileges:true
        if key == "no-new-privileges":
            if value not in ("", "true", "false"):
                raise InvalidInput(f"bad --security-opt {opt!r}: expected "
                                   "no-new-privileges[=true|false]")
            nnp = value != "false"
        elif key == "seccomp" and sep and value:
            if value == "unconfined":
                seccomp, seccomp_default = None, False
            else:
                # A profile applies even with --privileged, as in Docker.
                from lamina.run.seccomp import profile_from_file

                seccomp, seccomp_default = profile_from_file(value), False
        elif key in ("apparmor", "label") and sep:
            # Neither AppArmor nor SELinux labels are applied by lamina; Docker accepts
            # apparmor=unconfined and label=disable on hosts without them, so do we.
            if value not in ("unconfined", "disable"):
                raise InvalidInput(f"unsupported --security-opt {opt!r}: lamina applies "
                                   "no AppArmor or SELinux profiles")
        else:
            raise InvalidInput(f"unknown --security-opt {opt!r}: expected "
                               "no-new-privileges, seccomp=unconfined or seccomp=PROFILE.json")
    caps = frozenset(ALL_CAPS) if privileged else resolve_caps(cap_add, cap_drop)
    return Security(caps=caps, seccomp=seccomp, seccomp_default=seccomp_default,
                    no_new_privileges=nnp, masked=not privileged)
