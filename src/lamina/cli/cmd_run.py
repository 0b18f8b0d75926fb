"""``lamina run``: parse, call ``run_container``, exit with the process's status."""

from __future__ import annotations

import contextlib
import signal
from collections.abc import Callable, Iterator
from types import FrameType
from typing import Annotated

import typer

from lamina.store.store import Store


@contextlib.contextmanager
def _interruptible() -> Iterator[None]:
    """SIGTERM and SIGHUP stop the container like Ctrl-C does (the sandbox is stopped,
    the rootfs unmounted and removed) instead of killing lamina mid-way."""

    def stop(signum: int, frame: FrameType | None) -> None:
        raise KeyboardInterrupt

    old = {sig: signal.signal(sig, stop) for sig in (signal.SIGTERM, signal.SIGHUP)}
    try:
        yield
    finally:
        for sig, handler in old.items():
            signal.signal(sig, handler)


def register(app: typer.Typer, store_factory: Callable[[], Store]) -> None:
    # Everything after IMAGE belongs to the command (``sh -c "exit 3"``): no
    # interspersed options, unknown options passed through.
    @app.command(context_settings={"allow_interspersed_args": False,
                                   "ignore_unknown_options": True})
    def run(
        image: Annotated[str, typer.Argument(help="Image in the store.")],
        command: Annotated[list[str] | None, typer.Argument(
            help="Command and arguments (default: the image's ENTRYPOINT + CMD).")] = None,
        rm: Annotated[bool, typer.Option("--rm", help="Remove the container when it exits "
                                         "(always done: lamina keeps no containers).")] = False,
        env: Annotated[list[str] | None, typer.Option(
            "-e", "--env", help="K=V, or K to pass lamina's own value.")] = None,
        workdir: Annotated[str | None, typer.Option("-w", "--workdir",
                                                    help="Working directory.")] = None,
        user: Annotated[str | None, typer.Option(
            "-u", "--user", help="USER: name, uid, uid:gid or name:group.")] = None,
        volume: Annotated[list[str] | None, typer.Option(
            "-v", "--volume", help="Bind mount HOST:CONTAINER[:ro].")] = None,
        network: Annotated[str, typer.Option(help="none (only lo) or host.")] = "none",
        commit: Annotated[str | None, typer.Option(
            help="Save what the command changed as a new layer, tagged REF.",
            metavar="REF")] = None,
        snapshotter: Annotated[str, typer.Option(
            help="auto, overlay (root) or walk (anyone).")] = "auto",
    ) -> None:
        """Run a command in an image's root filesystem, sandboxed, in the foreground."""
        from lamina.build.importer import source_date_epoch
        from lamina.cli.format import err
        from lamina.errors import InvalidInput
        from lamina.image.reference import Reference
        from lamina.run.container import RunOptions, run_container

        if network not in ("none", "host"):
            raise InvalidInput(f"unknown network {network!r}: choose none or host")
        if snapshotter not in ("auto", "overlay", "walk"):
            raise InvalidInput(f"unknown snapshotter {snapshotter!r}: "
                               "choose auto, overlay or walk")
        opts = RunOptions(
            image=image, command=list(command or []), env=list(env or []), workdir=workdir,
            user=user, volumes=list(volume or []), network=network,  # type: ignore[arg-type]
            rm=True, commit=commit, snapshotter=snapshotter,  # type: ignore[arg-type]
            source_date_epoch=source_date_epoch() if commit else None)
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
        raise typer.Exit(result.exit_code)
