"""CURVE key files: safe modes, no overwrite, strict reading."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import zmq

from mamori.sensor.forwarding.cli import main
from mamori.sensor.forwarding.keys import (
    KeyFileError,
    generate,
    load_allow_list,
    load_pair,
    read_key,
)


def test_generate_writes_a_private_secret_and_a_matching_public_key(tmp_path: Path) -> None:
    pub, sec = generate("plant-7", tmp_path / "k")
    assert os.stat(sec).st_mode & 0o777 == 0o600
    assert os.stat(tmp_path / "k").st_mode & 0o777 == 0o700
    assert load_pair(sec).public == read_key(pub) == zmq.curve_public(read_key(sec, True))
    assert load_allow_list(tmp_path / "k") == {read_key(pub): "plant-7"}
    with pytest.raises(KeyFileError, match="already exists"):
        generate("plant-7", tmp_path / "k")


def test_unsafe_or_malformed_keys_are_refused(tmp_path: Path) -> None:
    _, sec = generate("a", tmp_path)
    os.chmod(sec, 0o644)
    with pytest.raises(KeyFileError, match="accessible by others"):
        load_pair(sec)
    (tmp_path / "b.pub").write_text("not a key\n")
    with pytest.raises(KeyFileError, match="not a Z85"):
        load_allow_list(tmp_path)
    with pytest.raises(KeyFileError, match="not a key name"):
        generate("../evil", tmp_path)


def test_cli_keys_generate(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["keys", "generate", "s1", "--dir", str(tmp_path)]) == 0
    assert (tmp_path / "s1.pub").exists() and "public key" in capsys.readouterr().out
    assert main(["keys", "generate", "s1", "--dir", str(tmp_path)]) == 1


@pytest.mark.parametrize("content", [b"x" * 5000, "Ünïcode\n".encode()])
def test_key_files_are_read_bounded_and_strictly(tmp_path: Path, content: bytes) -> None:
    path = tmp_path / "c.pub"
    path.write_bytes(content)
    with pytest.raises(KeyFileError, match=f"{path}: not a Z85 CURVE key"):
        read_key(path)


@pytest.mark.parametrize("path", [Path("/dev/zero"), Path("/dev/null")])
def test_a_device_is_not_a_key_file(path: Path) -> None:
    """Read whole, /dev/zero would never end; it is refused before it is opened."""
    with pytest.raises(KeyFileError, match="not a regular file"):
        read_key(path)


def test_a_missing_key_file_is_one_line_without_errno(tmp_path: Path) -> None:
    with pytest.raises(KeyFileError) as err:
        read_key(tmp_path / "absent.pub")
    assert str(err.value) == (f"{tmp_path / 'absent.pub'}: cannot read key: "
                              "No such file or directory")
