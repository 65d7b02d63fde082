"""Both front ends (``python3 -m vmcrash.guest`` and ``vmcrash guest``): same output, same exit codes, stdlib only."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from _guestsys import system, write_tree

import vmcrash

SRC = Path(vmcrash.__file__).resolve().parent


def run(argv: list[str], cwd: Path | None = None, python: str = sys.executable,
        flags: tuple[str, ...] = ()) -> subprocess.CompletedProcess[str]:
    return subprocess.run([python, *flags, *argv], capture_output=True, text=True, cwd=cwd, timeout=120,
                          check=False)


def both(args: list[str]) -> tuple[subprocess.CompletedProcess[str], subprocess.CompletedProcess[str]]:
    a = run(["-m", "vmcrash.guest", *args])
    b = run(["-c", "from vmcrash.cli.main import main; main()", "guest", *args])
    return a, b


@pytest.fixture
def root(tmp_path: Path) -> Path:
    write_tree(tmp_path / "root", system())
    return tmp_path / "root"


def test_audit_exit_codes_and_output_match(root: Path, tmp_path: Path) -> None:
    a, b = both(["audit", "--root", str(root)])
    assert (a.returncode, b.returncode) == (1, 1)
    assert a.stdout == b.stdout and "FAIL  web.service" in a.stdout
    a, b = both(["audit", "--root", str(root), "--json", "--unit", "web.service"])
    assert a.stdout == b.stdout
    assert [s["unit"] for s in json.loads(a.stdout)["services"]] == ["web.service"]
    a, b = both(["audit", "--root", str(tmp_path / "missing")])
    assert (a.returncode, b.returncode) == (2, 2)
    assert a.stderr.startswith("error: could not audit:") and a.stderr == b.stderr
    (tmp_path / "empty").mkdir()
    a, b = both(["audit", "--root", str(tmp_path / "empty")])
    assert (a.returncode, b.returncode) == (2, 2)


def test_fix_dry_run_fix_undo_through_both(root: Path) -> None:
    a, b = both(["fix", "--root", str(root), "--all-enabled", "--dry-run"])
    assert (a.returncode, b.returncode) == (0, 0) and a.stdout == b.stdout
    assert "+After=time-sync.target" in a.stdout
    a = run(["-m", "vmcrash.guest", "fix", "--root", str(root), "--all-enabled"])
    assert a.returncode == 0 and "wrote /etc/chrony/chrony.conf" in a.stdout
    a, b = both(["audit", "--root", str(root)])
    assert (a.returncode, b.returncode) == (0, 0)
    a, b = both(["fix", "--root", str(root), "--unit", "chrony.service"])
    assert (a.returncode, b.returncode) == (2, 2) and "ordering cycle" in a.stderr
    b = run(["-c", "from vmcrash.cli.main import main; main()", "guest", "fix", "--root", str(root), "--undo"])
    assert b.returncode == 0 and "restore /etc/chrony/chrony.conf" in b.stdout
    a, b = both(["fix", "--root", str(root), "--undo"])
    assert (a.returncode, b.returncode) == (2, 2)
    a = run(["-m", "vmcrash.guest", "fix", "--unit", "x.service", "--all-enabled"])
    assert a.returncode == 2  # argparse: mutually exclusive


def test_runs_from_a_copied_directory_with_the_standard_library_only(root: Path, tmp_path: Path) -> None:
    """What a guest does: copy vmcrash/{__init__,errors}.py and vmcrash/guest/, run the system python3
    without site-packages (-S: only the standard library can be imported)."""
    python = shutil.which("python3", path="/usr/bin:/bin") or sys.executable
    pkg = tmp_path / "copy/vmcrash"
    (pkg / "guest").mkdir(parents=True)
    for name in ("__init__.py", "errors.py"):
        shutil.copyfile(SRC / name, pkg / name)
    for py in (SRC / "guest").glob("*.py"):
        shutil.copyfile(py, pkg / "guest" / py.name)
    flags = ("-S", "-E", "-s")
    done = run(["-m", "vmcrash.guest", "audit", "--root", str(root), "--json"], cwd=tmp_path / "copy",
               python=python, flags=flags)
    assert done.returncode == 1, done.stderr
    assert json.loads(done.stdout)["time_sync"]["in_transaction"] is True
    probe = run(["-c", ("import sys, vmcrash.guest, vmcrash.guest.cli, vmcrash.guest.fix; "
                       "print(sorted(m for m in sys.modules if m.split('.')[0] in "
                       "('click', 'libvirt', 'rich', 'zstandard', 'lz4')))")],
                cwd=tmp_path / "copy", python=python, flags=flags)
    assert probe.returncode == 0 and probe.stdout.strip() == "[]"


def test_click_wrapper_imports_neither_libvirt_nor_rich() -> None:
    probe = run(["-c", ("import sys, vmcrash.cli.guest; "
                       "print(sorted(m for m in sys.modules if m.split('.')[0] in ('libvirt', 'rich')))")])
    assert probe.returncode == 0 and probe.stdout.strip() == "[]"
