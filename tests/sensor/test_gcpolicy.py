"""The ``mamori`` program collects the young generation less often, and still frees cycles."""

from __future__ import annotations

import subprocess
import sys

from mamori.sensor import gcpolicy


def _run(code: str) -> list[str]:
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          check=True).stdout.split()


def test_the_program_tunes_the_collector_and_main_does_not() -> None:
    code = ("import gc, contextlib, io\n"
            "from mamori.sensor import cli\n"
            "before = gc.get_threshold()\n"
            "with contextlib.redirect_stdout(io.StringIO()):\n"
            "    cli.main(['rules', 'check'])\n"
            "after_main = gc.get_threshold()\n"
            "with contextlib.redirect_stdout(io.StringIO()):\n"
            "    cli.program(['rules', 'check'])\n"
            "print(before[0], after_main[0], *gc.get_threshold(), gc.isenabled())\n")
    default, after_main, young, middle, old, enabled = _run(code)
    assert after_main == default == "700"
    assert int(young) == gcpolicy.YOUNG_THRESHOLD
    assert (middle, old, enabled) == ("10", "10", "True")


def test_the_console_script_is_the_program() -> None:
    from importlib.metadata import entry_points

    (script,) = [e for e in entry_points(group="console_scripts") if e.name == "mamori"]
    assert script.value == "mamori.sensor.cli:program"


def test_cycles_are_still_freed_without_being_asked() -> None:
    """Ten times the threshold in garbage cycles, no gc.collect(): the collector frees
    most of them along the way (turned off, it would free none), in few collections."""
    made = 10 * gcpolicy.YOUNG_THRESHOLD
    code = ("import gc\n"
            "from mamori.sensor import gcpolicy\n"
            "gcpolicy.tune()\n"
            "freed = [0, 0]\n"
            "def count(phase, info):\n"
            "    if phase == 'stop':\n"
            "        freed[0] += info['collected']\n"
            "        freed[1] += 1\n"
            "gc.callbacks.append(count)\n"
            "class Node:\n"
            "    __slots__ = ('other',)\n"
            f"for _ in range({made}):\n"
            "    a, b = Node(), Node()\n"
            "    a.other, b.other = b, a\n"
            "print(*freed)\n")
    freed, collections = map(int, _run(code))
    assert freed >= 2 * made * 8 // 10  # two objects a cycle
    assert collections <= 2 * made // gcpolicy.YOUNG_THRESHOLD
