"""``lamina run``'s options come before IMAGE and are lamina's; everything after IMAGE is
the command's (#10.15)."""

from __future__ import annotations

import subprocess

from lamina_testing import LAMINA, Lamina, need_root


def test_an_unknown_option_before_the_image_is_a_usage_error(lamina: Lamina) -> None:
    res = lamina.fail("run", "--bogus", "demo/a", "true")
    assert res.code == 2 and "No such option: --bogus" in res.err
    assert "invalid reference" not in res.err


def test_tty_options_are_laminas_not_taken_for_an_image(lamina: Lamina) -> None:
    """-t is supported since #12 (tests/run/test_container_tty.py); it is still an
    option of lamina's, never an image name."""
    for args in (["-it"], ["-t"], ["--tty"], ["-i", "-t"]):
        res = lamina.fail("run", *args, "demo/a", "sh")
        assert res.code == 2 and "image demo/a:latest not in the store" in res.err, (
            args, res.err)


def test_options_after_the_image_belong_to_the_command(seeded: Lamina) -> None:
    need_root()
    res = seeded.run("run", "demo/a", "sh", "-c", "echo -it")
    assert res.out == "-it\n"
    assert seeded.run("run", "demo/a", "echo", "--bogus", "-e", "X").out == "--bogus -e X\n"


def test_interactive_keeps_stdin_attached(seeded: Lamina) -> None:
    need_root()
    for args in (["-i"], ["--interactive"], []):
        proc = subprocess.run([LAMINA, "run", *args, "demo/a", "cat"], input="to the app\n",
                              capture_output=True, text=True, env=seeded.env, timeout=60)
        assert (proc.returncode, proc.stdout) == (0, "to the app\n"), (args, proc.stderr)
