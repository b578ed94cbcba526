"""``mamori COMMAND`` imports only COMMAND's module: the table that says which module
registers which command stays true, and the one-command parser is the full one's."""

from __future__ import annotations

import argparse
import subprocess
import sys

import pytest

from mamori.sensor import cli


def _subcommands(parser: argparse.ArgumentParser) -> dict[str, argparse.ArgumentParser]:
    actions = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
    return dict(actions[0].choices) if actions else {}


def _helps(parser: argparse.ArgumentParser, prefix: str = "") -> dict[str, str]:
    """Every (sub)command's help text under ``parser``, by its command line."""
    out: dict[str, str] = {}
    for name, sub in _subcommands(parser).items():
        out[f"{prefix}{name}"] = sub.format_help()
        out.update(_helps(sub, f"{prefix}{name} "))
    return out


def test_the_table_names_every_command_of_each_module() -> None:
    listed = [name for names in cli.FEATURES.values() for name in names]
    assert len(listed) == len(set(listed))
    assert list(_subcommands(cli.build_parser())) == listed  # --help's order, too
    for module, names in cli.FEATURES.items():
        parser = argparse.ArgumentParser(prog="mamori")
        commands = parser.add_subparsers(dest="command")
        cli._register(commands, module)
        assert tuple(_subcommands(parser)) == names, module


@pytest.mark.parametrize("command", [n for names in cli.FEATURES.values() for n in names])
def test_a_one_command_parser_is_the_full_ones(command: str) -> None:
    """It has the commands of COMMAND's module, each (and each of their subcommands)
    with the help, hence the options, of the full parser."""
    names = next(names for names in cli.FEATURES.values() if command in names)
    lazy = cli.build_parser(command)
    assert tuple(_subcommands(lazy)) == names
    full = {k: v for k, v in _helps(cli.build_parser()).items() if k.split()[0] in names}
    assert _helps(lazy) == full


def test_replay_imports_neither_zmq_nor_the_other_commands() -> None:
    code = ("import sys\n"
            "from mamori.sensor.cli import build_parser, _command\n"
            "build_parser(_command(['replay', 'x.pcap']))\n"
            "print(' '.join(sorted(m for m in ('zmq', 'asyncio', 'jsonschema',\n"
            "    'mamori.sensor.web.cli', 'mamori.sensor.daemon.cli',\n"
            "    'mamori.sensor.collector.subscribe_cli') if m in sys.modules)) or 'none')\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True).stdout.strip()
    assert out == "none"


def test_what_is_no_known_command_gets_the_full_parser(
        capsys: pytest.CaptureFixture[str]) -> None:
    assert cli._command(["replya"]) is None
    assert cli._command(["--version"]) is None
    assert cli._command([]) is None
    assert cli._command(["replay", "--help"]) == "replay"
    with pytest.raises(SystemExit) as exc:
        cli.main(["replya"])
    assert exc.value.code == 2
    err = capsys.readouterr().err
    assert "invalid choice: 'replya'" in err
    for names in cli.FEATURES.values():
        for name in names:
            assert f"'{name}'" in err


def test_the_help_lists_every_command(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        cli.main(["--help"])
    out = capsys.readouterr().out
    for names in cli.FEATURES.values():
        for name in names:
            assert name in out
