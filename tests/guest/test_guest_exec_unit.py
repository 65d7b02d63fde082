"""The host-side audit's pure parts: the guest's result is hostile data (bounded, validated); the bootstrap
imports the guest package from memory and runs it (checked here with this machine's python3)."""

from __future__ import annotations

import base64
import json
import subprocess
import sys
import zlib
from pathlib import Path

import pytest
from _guestsys import system, write_tree

from vmcrash.errors import AgentProtocolError
from vmcrash.host.guest_exec import BOOTSTRAP, MAX_RESULT_BYTES, decode_result, guest_payload


def packed(doc: object) -> bytes:
    return b"noise\nVMCRASH-RESULT " + base64.b64encode(zlib.compress(json.dumps(doc).encode())) + b"\n"


def test_decode_result_accepts_the_expected_document() -> None:
    assert decode_result(packed({"rc": 1, "out": "x\n", "err": ""})) == (1, "x\n", "")


@pytest.mark.parametrize("out", [
    b"", b"VMCRASH-RESULT !!!not base64", b"VMCRASH-RESULT " + base64.b64encode(b"not zlib"),
    packed([1, 2]), packed({"rc": True, "out": "", "err": ""}), packed({"rc": 0, "out": 5, "err": ""}),
    b"VMCRASH-RESULT " + base64.b64encode(zlib.compress(b"\\0" * (MAX_RESULT_BYTES + 10))),
])
def test_decode_result_refuses_garbage_with_one_clear_error(out: bytes) -> None:
    with pytest.raises(AgentProtocolError):
        decode_result(out, domain="g")


def test_bootstrap_runs_the_guest_package_from_memory_only(tmp_path: Path) -> None:
    write_tree(tmp_path / "root", system())
    done = subprocess.run(["/usr/bin/python3", "-I", "-c", BOOTSTRAP, "60", "audit", "--json", "--root",
                           str(tmp_path / "root")], input=guest_payload(), capture_output=True, timeout=120,
                          cwd=tmp_path, check=False)
    assert done.returncode == 0, done.stderr
    rc, out, err = decode_result(done.stdout)
    direct = subprocess.run([sys.executable, "-m", "vmcrash.guest", "audit", "--json", "--root",
                             str(tmp_path / "root")], capture_output=True, text=True, timeout=120, check=False)
    assert rc == direct.returncode == 1
    assert json.loads(out) == json.loads(direct.stdout)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["root"]  # nothing written beside it
