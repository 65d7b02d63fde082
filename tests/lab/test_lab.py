"""The crash lab against real libvirtd + QEMU + the lab guest kernel (never skipped).

Ground truth: libvirt's own events and state, the guest's serial console, QEMU's command line,
and ``virsh``.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

import pytest

from vmcrash.host.events import Subscription, wait_for_panic
from vmcrash.lab.guest import PANIC_LINE

pytestmark = pytest.mark.lab

VMCRASH = [sys.executable, "-m", "vmcrash.cli.main"]


def _qemu_cmdline(name: str) -> str:
    pid = Path(f"/run/libvirt/qemu/{name}.pid").read_text().strip()
    return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()


def _virsh(*args: str) -> str:
    return subprocess.run(["virsh", "-c", "qemu:///system", *args], check=True, capture_output=True,
                          text=True).stdout


@pytest.mark.parametrize("panic_model", ["isa", "pci"])
def test_guest_boots_and_panic_is_reported_by_libvirt_event(hv, lab_guest, panic_model: str) -> None:
    guest = lab_guest(panic_model=panic_model, hostname=f"lab-{panic_model}")
    sub, events = Subscription.to_queue(hv)
    try:
        guest.boot()
        qemu = _qemu_cmdline(guest.name)
        if panic_model == "isa":
            assert "\"driver\":\"pvpanic\",\"ioport\":1285" in qemu  # 0x505
        else:
            assert "pvpanic-pci" in qemu
        # The agent answers guest-get-time with a clock near the host's.
        agent = guest.agent()
        t0 = time.time_ns()
        guest_ns = agent.get_time_ns()
        t1 = time.time_ns()
        assert abs(guest_ns - (t0 + t1) // 2) < 5e9
        guest.crash()
        ev = wait_for_panic(events, guest.name, 60)
        assert ev is not None, "no CRASHED lifecycle event"
        assert (ev.event, ev.detail) == ("crashed", "panicked")
    finally:
        sub.close()
    # virsh (not our code) agrees on the state and its reason.
    assert "crashed (panicked)" in _virsh("domstate", "--reason", guest.name)
    guest.wait_serial(PANIC_LINE, 30)
    assert "sysrq triggered crash" in guest.serial_text()


def test_lab_guest_cleanup_after_a_failing_test(pytester: pytest.Pytester, tmp_path: Path) -> None:
    conftest = Path(__file__).parents[1] / "conftest.py"
    pytester.makeconftest(conftest.read_text())
    record = tmp_path / "name"
    pytester.makepyfile(f"""
        def test_fails(lab_guest):
            g = lab_guest()
            g.start()
            open({str(record)!r}, "w").write(g.name)
            assert False, "deliberate failure"
    """)
    result = pytester.runpytest_subprocess("-p", "no:cacheprovider")
    result.assert_outcomes(failed=1)
    name = record.read_text()
    assert name.startswith("vmcrash-lab-")
    assert name not in _virsh("list", "--all", "--name").split()


def test_lab_cli_builds_and_boots_2gib_filled_guest_and_crashes_it(tmp_path: Path) -> None:
    build = subprocess.run([*VMCRASH, "lab", "build", "--json"], capture_output=True, text=True, check=True)
    image = json.loads(build.stdout)
    assert Path(image["kernel"]).exists() and Path(image["initrd"]).exists()
    serial = tmp_path / "console.log"
    run = subprocess.run([*VMCRASH, "lab", "boot", "--memory", "2048", "--fill-mib", "1024", "--crash",
                          "--serial", str(serial), "--json"], capture_output=True, text=True, timeout=600)
    assert run.returncode == 0, run.stderr
    out = json.loads(run.stdout)
    console = serial.read_text(errors="replace")
    assert "vmcrash-lab: filled 1024 MiB" in console
    assert PANIC_LINE in console
    assert out["panic_line"] and out["panic_line"] in console
    assert out["domain"] not in _virsh("list", "--all", "--name").split()


def test_selftest_json_reports_each_step_with_durations() -> None:
    run = subprocess.run([*VMCRASH, "selftest", "--json"], capture_output=True, text=True, timeout=600)
    report = json.loads(run.stdout)
    assert run.returncode == 0, run.stdout + run.stderr
    assert report["result"] == "PASS"
    names = [s["name"] for s in report["steps"]]
    for required in ("boot", "agent", "crash", "panic-event", "dump-written", "guest-recovered",
                     "clock-corrected", "panic-identified", "catalogue-entry"):
        assert required in names
    for step in report["steps"]:
        assert step["status"] == "ok"
        assert isinstance(step["duration_s"], float) and step["duration_s"] >= 0
    event = next(s for s in report["steps"] if s["name"] == "panic-event")
    assert event["data"]["event"] == "crashed" and event["data"]["detail"] == "panicked"
    assert report["domain"] not in _virsh("list", "--all", "--name").split()
    # the dump the selftest wrote is gone with its throwaway work dir
    dump = next(s for s in report["steps"] if s["name"] == "dump-written")["data"]["path"]
    assert not Path(dump).exists()


def test_kvm_probe_verdict_is_remembered(hv, lab_image) -> None:
    from vmcrash.lab.guest import best_accel
    from vmcrash.lab.kvm import _CACHE

    accel = best_accel(hv, lab_image)
    assert accel in ("kvm", "qemu")
    assert json.loads(_CACHE.read_text())["accel"] == accel
