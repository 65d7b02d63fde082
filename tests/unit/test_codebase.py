"""The code base itself: lint-clean (ruff) and type-checked (mypy), so CI catches regressions."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_ruff_is_clean() -> None:
    res = subprocess.run([sys.executable, "-m", "ruff", "check", "src", "tests", "bench"], cwd=ROOT,
                         capture_output=True, text=True)
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-1000:]


def test_mypy_is_clean() -> None:
    res = subprocess.run([sys.executable, "-m", "mypy"], cwd=ROOT, capture_output=True, text=True)
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-1000:]


def test_guest_package_imports_only_the_standard_library() -> None:
    """`vmcrash.guest` runs inside guests: importing it must not pull libvirt, click or rich."""
    code = ("import sys, vmcrash.guest, vmcrash.guest.audit, vmcrash.guest.fix; "
            "bad = [m for m in ('libvirt', 'click', 'rich', 'prometheus_client') if m in sys.modules]; "
            "print(bad); sys.exit(1 if bad else 0)")
    res = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True)
    assert res.returncode == 0, res.stdout + res.stderr


def test_the_pipeline_moves_crash_states_only_through_advance() -> None:
    """``Catalog.update(state=...)`` skips the transition table and the observers: the capture code never uses it."""
    import ast

    offenders = []
    for path in sorted((ROOT / "src" / "vmcrash" / "capture").glob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and node.func.attr == "update" \
                    and any(k.arg == "state" for k in node.keywords):
                offenders.append(f"{path.name}:{node.lineno}")
    assert offenders == []


def test_clock_package_does_not_import_libvirt() -> None:
    """`vmcrash.clock` reaches the agent through a narrow protocol and the pure reply checks of
    `vmcrash.host.agent_protocol`: importing it must not pull libvirt."""
    code = ("import sys, vmcrash.clock, vmcrash.clock.fleet, vmcrash.clock.freezes, vmcrash.clock.hostsleep; "
            "bad = [m for m in ('libvirt', 'libvirt_qemu') if m in sys.modules]; "
            "print(bad); sys.exit(1 if bad else 0)")
    res = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True)
    assert res.returncode == 0, res.stdout + res.stderr
