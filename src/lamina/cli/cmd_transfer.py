"""``lamina pull``, ``push``, ``copy``, ``login``, ``logout``: thin — parse, call
``lamina.transport.transfer``, print the way ``docker pull``/``push`` print."""

from __future__ import annotations

import contextlib
import sys
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import click

from lamina.cli.format import argument, flag, option

if TYPE_CHECKING:
    from rich.progress import Progress, TaskID

insecure_flag = flag("--insecure",
                     help="Allow plain HTTP and unverified TLS for the registry.")
ca_option = option("--ca-bundle", kind=Path,
                   help="CA certificates (PEM) to trust for the registry.")
jobs_option = option("--jobs", "-j", kind=int, default=3, help="Blobs moved at once.")
quiet_flag = flag("-q", "--quiet", help="Print only the result.")
json_flag = flag("--json", "json_", help="Print the result as JSON.")
platform_option = option("--platform", help="OS/ARCH[/VARIANT] to pick from an index.")
dest_format_option = option(
    "--dest-compress-format", "dest_format",
    help="Write every layer as gzip, zstd or zstd:chunked (a zstd layer with a file "
         "index, for delta pulls); layers already in that form are kept.")
dest_level_option = option("--dest-compress-level", "dest_level", kind=int,
                           help="Compression level for --dest-compress-format.")


def conversion(dest_format: str | None, dest_level: int | None) -> Any:
    """The ``Conversion`` the --dest-compress-* options ask for (None: keep layers)."""
    from lamina.errors import InvalidInput
    from lamina.transport.compressing import Conversion

    if dest_format is None:
        if dest_level is not None:
            raise InvalidInput("--dest-compress-level needs --dest-compress-format")
        return None
    return Conversion(dest_format, dest_level)


class Printer:
    """Per-layer status lines (``23a91c4350c4: Already exists``), with bars on a terminal.
    Events arrive from worker threads; one lock keeps lines whole."""

    def __init__(self, mode: str, quiet: bool) -> None:
        self.mode = mode
        self.quiet = quiet
        self.lock = threading.Lock()
        self.kinds: dict[str, Any] = {}
        self.bar: Progress | None = None
        self.tasks: dict[str, TaskID] = {}
        # per layer pulled: how it arrived (for --json): "exists", "pulled" or "delta"
        # with the bytes taken from the store
        self.layers: dict[str, dict[str, Any]] = {}

    @contextlib.contextmanager
    def running(self) -> Iterator[Printer]:
        if not self.quiet and sys.stdout.isatty():
            from rich.progress import BarColumn, DownloadColumn, Progress, TextColumn

            from lamina.cli.format import out

            with Progress(TextColumn("{task.description}"), BarColumn(), DownloadColumn(),
                          console=out) as bar:
                self.bar = bar
                yield self
            self.bar = None
        else:
            yield self

    def line(self, short: str, text: str, total: int | None = None,
             done: int | None = None) -> None:
        if self.quiet:
            return
        if self.bar is None:
            from lamina.cli.format import say

            say(f"{short}: {text}")
            return
        task = self.tasks.get(short)
        if task is None:
            self.tasks[short] = self.bar.add_task(f"{short}: {text}", total=total or None)
        else:
            self.bar.update(task, description=f"{short}: {text}", completed=done)

    def on_push(self, push: Any) -> None:
        with self.lock:
            self.kinds[str(push.digest)] = push

    def on_event(self, event: Any) -> None:
        if event.kind == "progress" and self.bar is None:
            return   # one per piece received: drawn only on a terminal
        from lamina.image import mediatypes as mt

        desc = event.descriptor
        if not mt.is_layer(desc.media_type):
            return
        short = desc.digest.short
        with self.lock:
            if event.kind in ("exists", "done"):
                self.layers[str(desc.digest)] = {
                    "digest": str(desc.digest), "size": desc.size,
                    "status": "exists" if event.kind == "exists" else
                              "delta" if event.reused else
                              "copied" if self.mode == "copy" else "pulled",
                    "reused": desc.size if event.kind == "exists" else event.reused}
            if self.mode in ("pull", "copy"):
                pull = self.mode == "pull"
                text = {"exists": "Already exists", "start": "Pulling fs layer" if pull
                        else None, "done": "Pull complete" if pull else "Copied"
                        }.get(event.kind)
                if event.kind == "done" and event.reused:
                    from lamina.units import human_size

                    # a delta pull: most of the layer came from the destination
                    text = (f"{text} (Reused {human_size(event.reused)} of "
                            f"{human_size(desc.size)})")
                if event.kind == "progress":
                    if self.bar is not None:
                        self.line(short, "Downloading" if pull else "Copying", event.total,
                                  event.done)
                    return
            else:
                push = self.kinds.get(str(desc.digest))
                if event.kind == "exists":
                    text = "Layer already exists"
                elif event.kind == "done":
                    text = (f"Mounted from {push.mounted_from}"
                            if push is not None and push.kind == "mounted" else "Pushed")
                elif event.kind == "start":
                    text = "Preparing" if self.bar is not None else None
                else:
                    if self.bar is not None:
                        self.line(short, "Pushing", event.total, event.done)
                    return
            if text is not None:
                self.line(short, text, desc.size, desc.size if event.kind != "start" else 0)


def _registry_opts(insecure: bool, ca_bundle: Path | None, jobs: int) -> Any:
    from lamina.errors import InvalidInput
    from lamina.transport.registry import RegistryOptions

    if jobs < 1:
        raise InvalidInput("--jobs must be at least 1")
    return RegistryOptions(insecure=insecure, ca_bundle=ca_bundle, jobs=jobs)


def register(app: click.Group, store_factory: Callable[[], Any]) -> None:
    @app.command()
    @argument("ref", help="NAME[:TAG|@DIGEST], e.g. localhost:5000/demo/a:latest.")
    @platform_option
    @insecure_flag
    @ca_option
    @jobs_option
    @quiet_flag
    @json_flag
    def pull(ref: str, platform: str | None, insecure: bool, ca_bundle: Path | None,
             jobs: int, quiet: bool, json_: bool) -> None:
        """Pull an image from a registry into the store; only missing layers move."""
        from lamina.cli.format import print_json, say
        from lamina.image.manifest import Platform
        from lamina.image.reference import Reference
        from lamina.transport.copy import Interrupted
        from lamina.transport.transfer import TransferOptions, pull_place, transfer

        src, dst = pull_place(ref)
        r = Reference.parse(ref)
        printer = Printer("pull", quiet or json_)
        if not (quiet or json_):
            say(f"{r.tag or r.digest}: Pulling from {r.repository}")
        try:
            with store_factory() as store:
                before = store.meta.get_tag(str(r)) if r.tag else None
                with printer.running():
                    result = transfer(store, src, dst, TransferOptions(
                        registry=_registry_opts(insecure, ca_bundle, jobs),
                        platform=Platform.parse(platform) if platform else None,
                        on_event=printer.on_event))
        except Interrupted as e:
            # Ctrl-C: the layers that arrived stay in the store (exit 130 follows)
            say(f"interrupted: {e.done} of {e.total} blobs pulled; run the same pull "
                "again to resume", sys.stderr)
            raise
        if json_:
            layers = list(printer.layers.values())
            print_json({"reference": str(r), "digest": str(result.descriptor.digest),
                        "downloaded": result.moved, "already_present": result.present,
                        # layer bytes that did not cross the wire: layers already here
                        # and the frames a delta pull took from the store
                        "reused_bytes": sum(x["reused"] for x in layers),
                        "layers": layers})
            return
        if quiet:
            say(r.familiar)
            return
        fresh = result.moved > 0 or before is None or before.digest != str(
            result.descriptor.digest)
        say(f"Digest: {result.descriptor.digest}")
        say(f"Status: {'Downloaded newer image' if fresh else 'Image is up to date'} "
                  f"for {r.familiar}")

    @app.command()
    @argument("ref", help="Image in the store.")
    @argument("dest", required=False,
              help="Where to push (default: REF, which then names the registry).")
    @insecure_flag
    @ca_option
    @jobs_option
    @dest_format_option
    @dest_level_option
    @quiet_flag
    @json_flag
    def push(ref: str, dest: str | None, insecure: bool, ca_bundle: Path | None, jobs: int,
             dest_format: str | None, dest_level: int | None, quiet: bool, json_: bool
             ) -> None:
        """Push an image to a registry; blobs it has are skipped, others mounted or sent."""
        from lamina.cli.format import print_json, say
        from lamina.transport.transfer import TransferOptions, push_places, transfer

        convert = conversion(dest_format, dest_level)
        src, dst = push_places(ref, dest)
        assert dst.ref is not None
        printer = Printer("push", quiet or json_)
        if not (quiet or json_):
            say(f"The push refers to repository [{dst.ref.familiar_name}]")
        with store_factory() as store, printer.running():
            result = transfer(store, src, dst, TransferOptions(
                registry=_registry_opts(insecure, ca_bundle, jobs),
                on_event=printer.on_event, on_push=printer.on_push, conversion=convert))
        if json_:
            print_json({"reference": str(dst.ref), "digest": str(result.descriptor.digest),
                        "size": result.descriptor.size, "converted": result.converted,
                        "blobs": {d: {"result": p.kind, "mounted_from": p.mounted_from}
                                  for d, p in printer.kinds.items()}})
            return
        if quiet:
            say(str(result.descriptor.digest))
            return
        say(f"{dst.ref.tag or 'digest'}: digest: {result.descriptor.digest} size: "
                  f"{result.descriptor.size}")

    @app.command()
    @argument("source", help="docker://…, oci:DIR[:TAG], oci-archive:PATH[:TAG], "
              "docker-archive:PATH[:REF], or a local image.")
    @argument("destination", help="Same forms as SOURCE.")
    @flag("--all", "all_platforms", help="Copy every platform of an index.")
    @platform_option
    @insecure_flag
    @ca_option
    @jobs_option
    @dest_format_option
    @dest_level_option
    @quiet_flag
    @json_flag
    def copy(source: str, destination: str, all_platforms: bool, platform: str | None,
             insecure: bool, ca_bundle: Path | None, jobs: int, dest_format: str | None,
             dest_level: int | None, quiet: bool, json_: bool) -> None:
        """Copy an image between any two places, moving only what the destination lacks."""
        from lamina.cli.format import print_json, say
        from lamina.image.manifest import Platform
        from lamina.transport.transfer import TransferOptions, transfer

        convert = conversion(dest_format, dest_level)
        printer = Printer("copy", quiet or json_)
        with store_factory() as store, printer.running():
            result = transfer(store, source, destination, TransferOptions(
                registry=_registry_opts(insecure, ca_bundle, jobs),
                platform=Platform.parse(platform) if platform else None,
                all_platforms=all_platforms, conversion=convert,
                on_event=printer.on_event))
        if json_:
            layers = list(printer.layers.values())
            print_json({"source": source, "destination": destination,
                        "digest": str(result.descriptor.digest), "copied": result.moved,
                        "skipped": result.present, "converted": result.converted,
                        # per layer: exists / copied / delta (with the bytes reused)
                        "reused_bytes": sum(x["reused"] for x in layers),
                        "layers": layers})
        elif not quiet:
            say(f"Copied {source} to {destination}: {result.moved} blobs copied, "
                      f"{result.present} already there")
            say(f"Digest: {result.descriptor.digest}")

    @app.command()
    @argument("registry", help="HOST[:PORT]")
    @option("-u", "--username")
    @option("-p", "--password")
    @flag("--password-stdin", help="Read the password from stdin.")
    @insecure_flag
    @ca_option
    def login(registry: str, username: str | None, password: str | None,
              password_stdin: bool, insecure: bool, ca_bundle: Path | None) -> None:
        """Log in to a registry; credentials are stored (0600) for pull and push."""
        from lamina.cli.format import say
        from lamina.errors import InvalidInput
        from lamina.transport.registry import login as do_login

        if password_stdin:
            if username is None:
                # stdin holds the password: nothing is left to ask the name from (as docker)
                raise InvalidInput("--password-stdin needs --username")
            password = sys.stdin.read().rstrip("\n")
        if (username is None or password is None) and not (
                sys.stdin is not None and sys.stdin.isatty()):
            # click's prompt would read a pipe (getpass warns, then EOF says "Aborted!");
            # docker: "Cannot perform an interactive login from a non TTY device".
            raise InvalidInput("no terminal to ask for a password: use --password-stdin"
                               if username is not None else "no terminal to ask for a "
                               "username: use --username and --password-stdin")
        if username is None:
            username = click.prompt("Username")
        if password is None:
            password = click.prompt("Password", hide_input=True)
        do_login(registry, username, password, _registry_opts(insecure, ca_bundle, 1))
        say("Login Succeeded")

    @app.command()
    @argument("registry", help="HOST[:PORT]")
    def logout(registry: str) -> None:
        """Forget the stored credentials for a registry."""
        from lamina.cli.format import say
        from lamina.transport.registry import logout as do_logout

        if do_logout(registry):
            say(f"Removing login credentials for {registry}")
        else:
            say(f"Not logged in to {registry}", sys.stderr)
