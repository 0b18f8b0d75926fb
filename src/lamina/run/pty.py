"""Terminals for containers: ``run -t``, ``exec -t``.

A container's terminal is allocated from a devpts instance of its own, as runc
allocates the console inside the container: the process then finds its terminal under
its own ``/dev/pts`` (``tty`` prints ``/dev/pts/0``), and the host's terminals are not
visible to it.  For ``run -t`` lamina (as root) mounts a fresh instance
(``newinstance``) in the container's directory, allocates the pair there, and the
sandbox binds that instance as ``/dev/pts``; for ``exec -t`` the pair comes from the
running container's own instance, through ``/proc/<pid>/root/dev/pts/ptmx``.  Without
root (no devpts mount) the terminal is one of the host's: everything works but
``tty``'s name.

lamina copies between the user's terminal (put in raw mode: Ctrl-C is a byte for the
container's line discipline, which turns it into SIGINT there) and the master side, and
passes the window size on at start and on every SIGWINCH, as ``docker attach`` does.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import os
import select
import signal
import struct
import termios
import tty
from collections.abc import Callable, Iterator
from pathlib import Path
from types import FrameType
from typing import Protocol

from lamina.errors import LaminaError

_TIOCGPTPEER = 0x5441          # linux/tty.h: the slave of a master, without a path
_TIOCSPTLCK = 0x40045431       # unlockpt(3)
_DEFAULT_SIZE = (24, 80)       # a detached terminal's size (nobody's window)


class Process(Protocol):
    """What the pump waits for at the end: a ``subprocess.Popen``, or run/nsexec.py's
    ``Entered``."""

    def wait(self) -> int: ...


def mount_devpts(where: Path) -> None:
    """Mount a new devpts instance on ``where`` (made if missing)."""
    from lamina.run.rootfs import mount

    where.mkdir(exist_ok=True)
    try:
        # gid 5 is "tty" in Debian's and most images' /etc/group (runc's default too).
        mount("devpts", os.fspath(where), "devpts", 2 | 8,   # nosuid, noexec
               "newinstance,ptmxmode=0666,mode=0620,gid=5")
    except OSError as e:
        raise LaminaError(f"cannot mount a devpts instance for the terminal: "
                          f"{e.strerror or e}") from None


def open_pair(ptmx: Path | None) -> tuple[int, int]:
    """(master, slave) of a new terminal from the multiplexer ``ptmx`` (a devpts
    instance's), or from the host's when None."""
    if ptmx is None:
        master, slave = os.openpty()
    else:
        master = os.open(ptmx, os.O_RDWR | os.O_NOCTTY | os.O_CLOEXEC)
        try:
            fcntl.ioctl(master, _TIOCSPTLCK, struct.pack("i", 0))
            slave = fcntl.ioctl(master, _TIOCGPTPEER, os.O_RDWR | os.O_NOCTTY)
        except OSError:
            os.close(master)
            raise
    os.set_inheritable(slave, True)
    return master, slave


def set_size(fd: int, rows: int, cols: int) -> None:
    fcntl.ioctl(fd, termios.TIOCSWINSZ, struct.pack("HHHH", rows, cols, 0, 0))


def copy_size(src: int, dst: int) -> None:
    """Give terminal ``dst`` the window size of ``src`` (default 24x80 if ``src`` has
    none); the kernel sends SIGWINCH to ``dst``'s foreground process group."""
    try:
        rows, cols = struct.unpack("HHHH", fcntl.ioctl(src, termios.TIOCGWINSZ, bytes(8)))[:2]
    except OSError:
        rows, cols = 0, 0
    if not rows or not cols:
        rows, cols = _DEFAULT_SIZE
    with contextlib.suppress(OSError):
        set_size(dst, rows, cols)


@contextlib.contextmanager
def raw_mode(fd: int) -> Iterator[None]:
    """The user's terminal in raw mode while the block runs (nothing if not a tty)."""
    if not os.isatty(fd):
        yield
        return
    saved = termios.tcgetattr(fd)
    tty.setraw(fd, termios.TCSANOW)
    try:
        yield
    finally:
        termios.tcsetattr(fd, termios.TCSAFLUSH, saved)


def _write_all(fd: int, data: bytes) -> None:
    while data:
        data = data[os.write(fd, data):]


def pump(master: int, proc: Process, stdin: int | None,
         output: Callable[[bytes], None]) -> int:
    """Copy ``stdin`` to the terminal and the terminal's output to ``output`` until the
    terminal's last user is gone; then the sandbox's status (``Popen.wait``)."""
    sources = [master] + ([stdin] if stdin is not None else [])
    while True:
        try:
            ready, _, _ = select.select(sources, [], [])
        except InterruptedError:
            continue
        if master in ready:
            try:
                data = os.read(master, 65536)
            except OSError as e:
                if e.errno != errno.EIO:   # EIO: every slave descriptor is closed
                    raise
                data = b""
            if not data:
                break
            output(data)
        if stdin is not None and stdin in ready:
            data = os.read(stdin, 65536)
            if data:
                with contextlib.suppress(OSError):
                    _write_all(master, data)
            else:
                sources.remove(stdin)   # end of input: the terminal stays open
    return proc.wait()


def foreground(master: int, proc: Process, stdin: int = 0,
               stdout: int = 1) -> int:
    """``run -it`` / ``exec -it``: the user's terminal is the container's (raw mode,
    window size kept in step) until the process ends; its status.  ``stdin`` -1: no
    input (``-t`` without ``-i``)."""
    sized = stdin if stdin >= 0 and os.isatty(stdin) else stdout
    copy_size(sized, master)

    def resized(signum: int, frame: FrameType | None) -> None:
        copy_size(sized, master)

    old = signal.signal(signal.SIGWINCH, resized)
    try:
        with raw_mode(stdin) if stdin >= 0 else contextlib.nullcontext():
            return pump(master, proc, stdin if stdin >= 0 else None,
                        lambda data: _write_all(stdout, data))
    finally:
        signal.signal(signal.SIGWINCH, old)
