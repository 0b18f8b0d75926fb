"""Containers: ``run``'s container options, and ``ps``, ``logs``, ``stop``, ``kill``,
``rm``, ``exec``, ``wait``, ``commit`` (run/containers.py does the work)."""

from __future__ import annotations

import os
import sys
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, TypeVar

import click

from lamina.cli.format import argument, flag, option

if TYPE_CHECKING:
    from lamina.store.containers import ContainerRecord
    from lamina.store.store import Store

F = TypeVar("F", bound=Callable[..., Any])


def container_options(f: F) -> F:
    """``lamina run``'s options for containers that are kept (issue 12)."""
    for decorate in reversed((
        flag("-d", "--detach", help="Run in the background under a monitor of its own; print "
             "the container id.  lamina has no daemon: there are no restart policies."),
        option("--name", help="Name the container (default: a random adjective_noun)."),
        option("--entrypoint", help="Replace the image's ENTRYPOINT (and drop its CMD); "
               "\"\" clears it."),
        option("--hostname", help="Host name in the container (default: its short id)."),
        flag("--read-only", help="Mount the root filesystem read-only (/dev, /proc, "
             "volumes and --tmpfs stay writable)."),
        option("--tmpfs", multiple=True, metavar="PATH[:OPTS]",
               help="Mount a tmpfs on PATH; OPTS: size=64m, mode=1777 (always nosuid, nodev)."),
        option("--env-file", multiple=True, metavar="FILE",
               help="Read K=V lines (before -e); # starts a comment."),
        flag("--init", help="Reap zombies and forward signals (always done: the command "
             "runs as PID 2 under the sandbox's reaping PID 1)."),
    )):
        f = decorate(f)
    return f


def run_kept(store_factory: Callable[[], Store], opts: Any) -> int | None:
    """``lamina run`` of a container (not ``--commit``): the exit status in the
    foreground; with ``-d`` the id is printed and None returned."""
    from lamina.cli.cmd_run import _interruptible
    from lamina.cli.format import err, say
    from lamina.run.containers import create, publish_ports, run_attached, run_detached
    from lamina.run.signals import SignalProxy

    with store_factory() as store:
        publisher = publish_ports(opts)
        try:
            with _interruptible():
                created = create(store, opts, publisher)
        except BaseException:
            publisher.close()
            raise
        if opts.detach:
            failed = run_detached(store, created)
            say(created.record.id)
            if failed is not None:
                err.print(f"the container's command could not start (exit {failed}); "
                          f"see lamina logs {created.record.name}", markup=False)
            return failed
        proxy = SignalProxy(int(created.record.spec["stop_signal"]), opts.stop_timeout)
        return run_attached(store, created, proxy)


def _status(rec: ContainerRecord) -> str:
    """ps's STATUS, Docker's words: "Up 5 seconds (healthy)", "Exited (0) 3 minutes
    ago", "Exited (unknown) …", "Created"."""
    from lamina.cli.format import human_age
    from lamina.run.ctrlog import timestamp

    if rec.state == "running":
        health = rec.health.get("Status")
        up = human_age(timestamp(rec.started or time.time())).removesuffix(" ago")
        return f"Up {up}" + (f" ({health})" if health else "")
    if rec.state == "exited":
        code = "unknown" if rec.exit_code is None else str(rec.exit_code)
        return f"Exited ({code}) {human_age(timestamp(rec.finished or time.time()))}"
    return "Created"


def _command(rec: ContainerRecord, full: bool) -> str:
    import shlex

    text = shlex.join(rec.spec["argv"])
    return f'"{text}"' if full or len(text) <= 20 else f'"{text[:19]}…"'


def _each(names: tuple[str, ...], act: Callable[[str], object]) -> None:
    """``act`` on every container named, as ``docker stop/kill/rm A B C`` do: each one
    done is printed, a failure is one line on stderr and the others go on; then the
    exit status of the first failure (its kind), if any."""
    from lamina.cli.format import say
    from lamina.errors import LaminaError

    first: LaminaError | None = None
    for name in names:
        try:
            act(name)
        except LaminaError as e:
            say(f"lamina: {e}", sys.stderr)
            first = first or e
            continue
        say(name)
    if first is not None:
        raise click.exceptions.Exit(first.exit_code)


def register(app: click.Group, store_factory: Callable[[], Store]) -> None:
    @app.command()
    @flag("-a", "--all", "all_", help="Show every container (default: running ones).")
    @flag("-q", "--quiet", help="Only container ids.")
    @flag("--no-trunc", help="Full ids and commands.")
    @flag("--json", "json_", help="Print JSON (inspect documents) for scripts.")
    def ps(all_: bool, quiet: bool, no_trunc: bool, json_: bool) -> None:
        """List containers: running ones, or all with -a."""
        from lamina.cli.format import human_age, print_json, say, table
        from lamina.run.containers import inspect_document, listing, ports_column
        from lamina.run.ctrlog import timestamp

        with store_factory() as store:
            recs = listing(store, all_)
        if json_:
            print_json([inspect_document(r) for r in recs])
            return
        if quiet:
            for r in recs:
                say(r.id if no_trunc else r.short_id)
            return
        table(["CONTAINER ID", "IMAGE", "COMMAND", "CREATED", "STATUS", "PORTS", "NAMES"],
              [[r.id if no_trunc else r.short_id, r.image, _command(r, no_trunc),
                human_age(timestamp(r.created)), _status(r),
                ports_column(r) if r.state == "running" else "", r.name] for r in recs])

    @app.command()
    @argument("container")
    @flag("-f", "--follow", help="Keep printing what the container writes until it exits.")
    @option("--tail", kind=int, metavar="N", help="Only the last N lines.")
    def logs(container: str, follow: bool, tail: int | None) -> None:
        """Print what a detached container wrote (stdout to stdout, stderr to stderr)."""
        from lamina.errors import InvalidInput
        from lamina.run.containers import find
        from lamina.run.ctrlog import LogReader
        from lamina.run.monitor import LOCK, LOG, container_dir, take_lock

        if tail is not None and tail < 0:
            raise InvalidInput(f"--tail must not be negative: {tail}")
        with store_factory() as store:
            rec = find(store, container)
            directory = container_dir(store, rec.id)
        reader = LogReader(directory / LOG, tail)
        streams = {"stdout": sys.stdout.buffer, "stderr": sys.stderr.buffer}
        while True:
            for record in reader.more():
                stream = streams[record.stream]
                stream.write(record.data)
                stream.flush()
            if not follow:
                return
            try:
                fd = take_lock(directory / LOCK, shared=True, wait=False)
            except OSError:
                return   # removed
            if fd is not None:   # the monitor is done: what is left, then stop
                os.close(fd)
                follow = False
                continue
            time.sleep(0.1)

    @app.command()
    @argument("containers", nargs=-1, required=True)
    @option("-t", "--time", "seconds", kind=int, metavar="SECONDS",
            help="Seconds between the stop signal and SIGKILL (default: the container's "
                 "--stop-timeout, 10).")
    def stop(containers: tuple[str, ...], seconds: int | None) -> None:
        """Stop running containers: the image's STOPSIGNAL (SIGTERM), then SIGKILL."""
        from lamina.errors import InvalidInput
        from lamina.run.containers import find
        from lamina.run.containers import stop as stop_container

        if seconds is not None and seconds < 0:
            raise InvalidInput(f"--time must not be negative: {seconds}")
        with store_factory() as store:
            _each(containers, lambda name: stop_container(store, find(store, name), seconds))

    @app.command()
    @argument("containers", nargs=-1, required=True)
    @option("-s", "--signal", "sig", default="KILL", help="Signal to send (name or number).")
    def kill(containers: tuple[str, ...], sig: str) -> None:
        """Send a signal (SIGKILL by default) to running containers' processes."""
        from lamina.run.containers import find
        from lamina.run.containers import kill as kill_container
        from lamina.run.signals import parse_signal

        number = parse_signal(sig)
        with store_factory() as store:
            _each(containers, lambda name: kill_container(find(store, name), number))

    @app.command()
    @argument("containers", nargs=-1, required=True)
    @flag("-f", "--force", help="Kill running containers first.")
    def rm(containers: tuple[str, ...], force: bool) -> None:
        """Remove containers (their root filesystem and log); running ones with -f."""
        from lamina.run.containers import find, remove

        with store_factory() as store:
            _each(containers, lambda name: remove(store, find(store, name), force))

    @app.command()
    @argument("containers", nargs=-1, required=True)
    def wait(containers: tuple[str, ...]) -> None:
        """Wait for containers to exit; print each exit status (-1: unknown)."""
        from lamina.cli.format import say
        from lamina.run.containers import find, wait_for_exit

        with store_factory() as store:
            for name in containers:
                done = wait_for_exit(store, find(store, name))
                code = done.exit_code if done is not None else None
                say(str(-1 if code is None else code))

    @app.command("exec", context_settings={"allow_interspersed_args": False})
    @argument("container")
    @argument("command", nargs=-1, required=True)
    @flag("-i", "--interactive", help="Keep stdin attached.")
    @flag("-t", "--tty", help="Allocate a terminal in the container.")
    @option("-e", "--env", multiple=True, help="K=V, or K to pass lamina's own value.")
    @option("-w", "--workdir", help="Working directory (default: the container's).")
    @option("-u", "--user", help="USER (default: the container's).")
    def exec_(container: str, command: tuple[str, ...], interactive: bool, tty: bool,
              env: tuple[str, ...], workdir: str | None, user: str | None) -> None:
        """Run a command in a running container's namespaces; exit with its status."""
        from lamina.run.containers import ExecOptions, exec_in, find

        with store_factory() as store:
            rec = find(store, container)
        with store_factory() as store:
            code = exec_in(store, rec, ExecOptions(list(command), list(env), workdir, user,
                                                   tty, interactive))
        raise click.exceptions.Exit(code)

    @app.command()
    @argument("container")
    @argument("ref", metavar="REF")
    @option("--compression", default="gzip", help="gzip, zstd, zstd:chunked or none.")
    def commit(container: str, ref: str, compression: str) -> None:
        """Save what a container changed as a new layer on its image, tagged REF."""
        from lamina.build.importer import source_date_epoch
        from lamina.cli.format import say
        from lamina.errors import InvalidInput
        from lamina.layer.options import COMPRESSIONS
        from lamina.run.containers import commit as commit_container
        from lamina.run.containers import find

        if compression not in COMPRESSIONS:
            raise InvalidInput(f"unknown compression {compression!r}: "
                               f"choose {', '.join(COMPRESSIONS)}")
        with store_factory() as store:
            desc = commit_container(store, find(store, container), ref, source_date_epoch(),
                                    compression)
        say(str(desc.digest))


def container_documents(store: Store, refs: tuple[str, ...]) -> list[dict[str, Any]] | None:
    """``lamina inspect`` of containers: their documents when every name is a container
    (None when one is not: then they are images)."""
    from lamina.errors import NotFound
    from lamina.run.containers import find, inspect_document

    docs = []
    for ref in refs:
        try:
            docs.append(inspect_document(find(store, ref)))
        except NotFound:
            return None
    return docs
