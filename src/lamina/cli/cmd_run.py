"""``lamina run``: parse, call ``run_container``, exit with the process's status."""

from __future__ import annotations

import contextlib
import signal
from collections.abc import Callable, Iterator
from types import FrameType
from typing import TYPE_CHECKING, Any

import click

from lamina.cli.cmd_containers import container_options
from lamina.cli.format import argument, flag, option
from lamina.cli.limits import expansion_option
from lamina.cli.run_sandbox import sandbox_options, sandbox_run_options

if TYPE_CHECKING:
    from lamina.store.store import Store


@contextlib.contextmanager
def _interruptible() -> Iterator[None]:
    """SIGTERM and SIGHUP while the rootfs is made or removed stop lamina like Ctrl-C
    does (the rootfs unmounted and removed) instead of killing it mid-way.  While the
    command runs, they are the command's (``lamina.run.signals``)."""

    def stop(signum: int, frame: FrameType | None) -> None:
        raise KeyboardInterrupt

    old = {sig: signal.signal(sig, stop) for sig in (signal.SIGTERM, signal.SIGHUP)}
    try:
        yield
    finally:
        for sig, handler in old.items():
            signal.signal(sig, handler)


def register(app: click.Group, store_factory: Callable[[], Store]) -> None:
    # Everything after IMAGE belongs to the command (``sh -c "exit 3"``): no interspersed
    # options.  Before IMAGE every option is lamina's: an unknown one is a usage error,
    # never an image name (docker run's rule).
    @app.command(context_settings={"allow_interspersed_args": False})
    @argument("image", help="Image in the store.")
    @argument("command", nargs=-1,
              help="Command and arguments (default: the image's ENTRYPOINT + CMD).")
    @flag("--rm", help="Remove the container when it exits (else ps -a lists it until rm).")
    @flag("-i", "--interactive", help="Keep stdin attached (always done in the foreground).")
    @flag("-t", "--tty", help="Allocate a terminal in the container (its own /dev/pts).")
    @container_options
    @option("--stop-signal", metavar="SIGNAL",
            help="Signal a SIGTERM to lamina becomes (default: the image's STOPSIGNAL).")
    @option("--stop-timeout", kind=int, default=10,
            help="Seconds between the stop signal and SIGKILL.")
    @option("-e", "--env", multiple=True, help="K=V, or K to pass lamina's own value.")
    @option("-w", "--workdir", help="Working directory.")
    @option("-u", "--user", help="USER: name, uid, uid:gid or name:group.")
    @option("-v", "--volume", multiple=True, help="Bind mount HOST:CONTAINER[:ro].")
    @option("--commit", metavar="REF",
            help="Save what the command changed as a new layer, tagged REF.")
    @option("--compression", default="gzip",
            help="Layer compression for --commit: gzip, zstd, zstd:chunked or none.")
    @option("--snapshotter", default="auto", help="auto, overlay (root) or walk (anyone).")
    @sandbox_options
    @expansion_option
    def run(image: str, command: tuple[str, ...], rm: bool, interactive: bool, tty: bool,
            stop_signal: str | None, stop_timeout: int, env: tuple[str, ...],
            workdir: str | None, user: str | None, volume: tuple[str, ...],
            commit: str | None, compression: str, snapshotter: str, detach: bool,
            name: str | None, entrypoint: str | None, hostname: str | None, read_only: bool,
            tmpfs: tuple[str, ...], env_file: tuple[str, ...], init: bool,
            **sandbox: Any) -> None:
        """Run a command in an image's root filesystem, sandboxed: a container.

        In the foreground lamina's signals go to the command (SIGTERM as the image's
        STOPSIGNAL, then SIGKILL after --stop-timeout), and lamina exits with the
        command's status; with -d it runs under a monitor of its own (see ps, logs,
        exec, stop).  Without --rm the container stays after it exited (ps -a, commit,
        rm).  Restart policies (--restart) are out of scope: lamina has no daemon to
        restart anything."""
        from pathlib import Path

        from lamina.build.importer import source_date_epoch
        from lamina.cli.cmd_containers import run_kept
        from lamina.cli.format import err
        from lamina.errors import InvalidInput, Unsupported
        from lamina.image.reference import Reference
        from lamina.layer.options import COMPRESSIONS
        from lamina.run.container import RunOptions, run_container
        from lamina.run.containers import read_env_file

        if commit and (detach or tty or name):
            raise Unsupported("--commit runs one command in the foreground: it cannot be "
                              "combined with -d, -t or --name (use lamina commit CONTAINER)")
        if stop_timeout < 0:
            raise InvalidInput(f"--stop-timeout must not be negative: {stop_timeout}")
        if compression not in COMPRESSIONS:
            raise InvalidInput(f"unknown compression {compression!r}: "
                               f"choose {', '.join(COMPRESSIONS)}")
        if snapshotter not in ("auto", "overlay", "walk"):
            raise InvalidInput(f"unknown snapshotter {snapshotter!r}: "
                               "choose auto, overlay or walk")
        env_all = [item for path in env_file for item in read_env_file(Path(path))]
        opts = RunOptions(
            image=image, command=list(command or []), env=env_all + list(env or []),
            workdir=workdir, user=user, volumes=list(volume or []),
            commit=commit, snapshotter=snapshotter,  # type: ignore[arg-type]
            compression=compression,  # type: ignore[arg-type]
            source_date_epoch=source_date_epoch() if commit else None,
            stop_signal=stop_signal, stop_timeout=stop_timeout, name=name, detach=detach,
            entrypoint=entrypoint, tty=tty, interactive=interactive, read_only=read_only,
            tmpfs=list(tmpfs), init=init, rm=True if commit else rm,
            # A kept container's default host name is its short id (Docker's).
            hostname=hostname or ("lamina" if commit else ""),
            **sandbox_run_options(sandbox, lambda line: err.print(line, markup=False)))
        if not commit:
            code = run_kept(store_factory, opts)
            if code is not None:
                raise click.exceptions.Exit(code)
            return
        with store_factory() as store, _interruptible():
            result = run_container(store, opts)
        if commit:
            # stdout is the container's; what lamina says goes to stderr.
            if result.committed is not None and result.reference is not None:
                err.print(f"Committed {Reference.parse(result.reference).familiar}: "
                          f"{result.committed.digest}", markup=False)
            else:
                err.print(f"Not committed: the command exited with {result.exit_code}",
                          markup=False)
        raise click.exceptions.Exit(result.exit_code)
