"""``vmcrash guest audit --domain``: one clear line and exit 3 when the guest cannot be audited.

Against the real lab guest (busybox initramfs, real qemu-ga, no python3) and the real libvirtd:
no python3 in the guest, no agent channel, no such domain.
"""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest

pytestmark = pytest.mark.lab


def cli(config: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "vmcrash.cli.main", "--config", str(config), "guest", "audit",
                           *args], capture_output=True, text=True, timeout=300, check=False)


@pytest.fixture
def config(hv: object, tmp_path: Path) -> Path:
    path = tmp_path / "vmcrash.toml"
    path.write_text(f'libvirt_uri = "{hv.uri}"\n')  # type: ignore[attr-defined]
    return path


def test_no_python3_no_agent_no_domain_are_one_line_errors(lab_guest: Callable[..., object], config: Path) -> None:
    with_agent = lab_guest(hostname="ga-nopython")
    without = lab_guest(agent=False, hostname="ga-none")
    with_agent.boot()  # type: ignore[attr-defined]
    without.boot()  # type: ignore[attr-defined]
    res = cli(config, "--domain", with_agent.name, "--timeout", "30")  # type: ignore[attr-defined]
    assert res.returncode == 3, res
    assert res.stdout == "" and res.stderr.count("\n") == 1
    assert "the guest has no python3" in res.stderr and "Traceback" not in res.stderr
    res = cli(config, "--domain", without.name)  # type: ignore[attr-defined]
    assert res.returncode == 3 and res.stderr.count("\n") == 1, res
    assert "no guest agent channel" in res.stderr
    doctor = subprocess.run([sys.executable, "-m", "vmcrash.cli.main", "--config", str(config), "doctor",
                             "--guest-audit", "--json", with_agent.name],  # type: ignore[attr-defined]
                            capture_output=True, text=True, timeout=300, check=False)
    (entry,) = json.loads(doctor.stdout)
    (check,) = [c for c in entry["checks"] if c["name"] == "guest-boot-order"]
    assert check["ok"] is False and "the guest has no python3" in check["detail"], check
    res = cli(config, "--domain", "vmcrash-no-such-domain-xyz")
    assert res.returncode == 2 and res.stderr.startswith("error: ") and res.stderr.count("\n") == 1, res
