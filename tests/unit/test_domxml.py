"""Doctor checks and fixes on domain XML; fixed XML is accepted by libvirt's own schema."""

from __future__ import annotations

import subprocess
from pathlib import Path

from vmcrash.host.domxml import apply_fixes, memory_bytes, readiness

BARE = """<domain type='qemu'>
  <name>bare</name>
  <memory unit='MiB'>512</memory>
  <vcpu>1</vcpu>
  <os><type arch='x86_64' machine='pc'>hvm</type></os>
  <on_poweroff>destroy</on_poweroff>
  <on_reboot>restart</on_reboot>
  <devices><emulator>/usr/bin/qemu-system-x86_64</emulator></devices>
</domain>"""


def test_bare_domain_fails_every_check() -> None:
    checks = {c.name: c for c in readiness(BARE)}
    assert not checks["panic-device"].ok
    assert not checks["vmcoreinfo"].ok
    assert not checks["agent-channel"].ok
    assert not checks["on-crash"].ok and "destroy" in checks["on-crash"].detail
    assert memory_bytes(BARE) == 512 * 1024 * 1024


def test_fixes_make_it_pass_and_validate(tmp_path: Path) -> None:
    fixed, changes = apply_fixes(BARE)
    assert len(changes) >= 4
    assert all(c.ok for c in readiness(fixed)), readiness(fixed)
    (tmp_path / "d.xml").write_text(fixed)
    res = subprocess.run(["virt-xml-validate", str(tmp_path / "d.xml"), "domain"], capture_output=True, text=True)
    assert res.returncode == 0, res.stdout + res.stderr
    again, more = apply_fixes(fixed)
    assert more == []  # idempotent
