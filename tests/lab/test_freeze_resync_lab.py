"""The daemon corrects the guest clock after every kind of freeze a real guest goes through.

One 512 MiB lab guest, one ``vmcrash watch``, six freezes in a row (reusing the guest is honest:
each freeze starts from a clock the previous correction left within 20 ms, checked independently):
pause/resume, managedsave + start, save + restore, an internal memory snapshot reverted, and a
guest S3 suspend + wake-up, and a managedsave + start while the daemon was down (found at its
start-up). Each must end within 20 ms of the host clock within 10 s of the guest
running again — measured by this test's own agent probe (``_clocklab.independent_offset``,
``guest-get-time`` straight through libvirt_qemu), not by the daemon's numbers — and be listed by
``vmcrash list --clock`` with its reason and the libvirt event that caused it.

Snapshots on the lab guest: it has no disk, so libvirt 9.0 refuses an internal snapshot ("internal
and full system snapshots require all disks to be selected for snapshot") and, for an external
memory snapshot (``--memspec file=...,snapshot=external``, which it does create), refuses the revert
("revert to external snapshot not supported yet"; libvirt reverts external snapshots only from
9.7). An empty 16 MiB qcow2 disk that the guest never uses gives the internal snapshot a place
for its memory state: that revert is a real memory snapshot revert, so it is what is tested here.

Host suspend (last, same guest): the lab machine cannot suspend itself, so two things are
simulated, and only these: the host's sleep is an injected clock pair whose ``CLOCK_BOOTTIME``
jumps 5 s ahead of ``CLOCK_MONOTONIC`` (what the kernel does over a suspend), and the guest's clock
standing still is a clock set 5 s back (no event, as over a host suspend). Everything after the
detection is real: :class:`~vmcrash.capture.freezewatch.FreezeResyncs` lists the running domains
through libvirt, resyncs the watched one over its agent and records it, checked by the independent
probe. A real host suspend has not been tried.
"""

from __future__ import annotations

import asyncio
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import libvirt
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "clock"))
from _clocklab import independent_offset, pause  # noqa: E402

from vmcrash.capture.freezewatch import FreezeResyncs  # noqa: E402
from vmcrash.config import parse_config  # noqa: E402
from vmcrash.store.catalog import Catalog  # noqa: E402

pytestmark = pytest.mark.lab

#: within this of the host clock (ms) ...
TOLERANCE_MS = 20.0
#: ... this long after the guest runs again (s)
WITHIN_S = 10.0


def _freeze_capable_xml(xml: str, disk: Path) -> str:
    """The lab guest's XML plus an unused qcow2 disk (internal snapshots) and guest S3 support."""
    xml = xml.replace("<devices>", "<devices>\n<disk type='file' device='disk'><driver name='qemu' type='qcow2'/>"
                      f"<source file='{disk}'/><target dev='hda' bus='ide'/></disk>", 1)
    return xml.replace("</features>", "</features>\n<pm><suspend-to-mem enabled='yes'/></pm>", 1)


def _probe_ms(dom: Any, deadline: float) -> float:
    """Independent offset (ms), retried while the agent reconnects; must be taken before ``deadline``."""
    while True:
        try:
            off_ns, rtt_ns = independent_offset(dom, probes=16)
            assert time.monotonic() <= deadline, "probe came too late"
            assert rtt_ns < 50_000_000, f"probe round trip {rtt_ns / 1e6:.1f} ms: too slow to judge 20 ms"
            return off_ns / 1e6
        except libvirt.libvirtError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.1)


class SleepingClocks:
    """(boottime, monotonic) of a host that sleeps ``slept_s`` once, between the first two reads."""

    def __init__(self, slept_s: float) -> None:
        self.reads = 0
        self.slept_ns = int(slept_s * 1e9)

    def __call__(self) -> tuple[int, int]:
        self.reads += 1
        mono = time.monotonic_ns()
        return mono + (self.slept_ns if self.reads >= 2 else 0), mono


def host_resume(hv: Any, name: str, tmp_path: Path) -> tuple[list[dict[str, Any]], float]:
    """Run the daemon's host-sleep loop with a host that "slept" 5 s; (rows it recorded, seconds)."""
    cfg = parse_config({"dump_dir": str(tmp_path / "hs-dumps"), "catalog": str(tmp_path / "hs.sqlite"),
                        "clock": {"host_sleep_check_s": 0.2, "agent_wait_s": 30}})
    catalog = Catalog(tmp_path / "hs.sqlite")
    clocks = SleepingClocks(5.0)
    freezes = FreezeResyncs(cfg, hv=lambda: hv, catalog=catalog, crash_busy=lambda uuid: False,
                            clock_pair=clocks)

    async def main() -> float:
        stop = threading.Event()
        # other helpers' lab guests run on this host too: only ours is watched, only ours may be touched
        loop_task = asyncio.create_task(freezes.host_sleep_loop(stop, lambda n: n == name))
        t0 = time.monotonic()
        # acted on = a resync is queued, or already done and recorded (a quick one can start and
        # finish between two looks)
        while clocks.reads < 2 or (freezes.scheduler.pending() == 0 and not catalog.clock_syncs()):
            assert time.monotonic() - t0 < WITHIN_S, "host resume not acted on"
            await asyncio.sleep(0.05)
        await freezes.scheduler.drain()
        stop.set()
        loop_task.cancel()
        freezes.close()
        return time.monotonic() - t0

    took_s = asyncio.run(main())
    rows = catalog.clock_syncs()
    catalog.close()
    return rows, took_s


class Freezes:
    """The guest, the daemon, and one check per freeze."""

    def __init__(self, guest: Any, daemon: Any) -> None:
        self.g = guest
        self.d = daemon
        self.seen: set[int] = set()
        self.report: list[str] = []
        self.t0 = time.monotonic()

    def new_row(self, reason: str, timeout_s: float) -> dict[str, Any]:
        deadline = time.monotonic() + timeout_s
        while True:
            cat = self.d.catalog()
            rows = [r for r in cat.clock_syncs(domain=self.g.name) if r["id"] not in self.seen]
            cat.close()
            mine = [r for r in rows if r["reason"] == reason]
            if mine:
                self.seen.update(r["id"] for r in rows)
                return mine[-1]
            if time.monotonic() > deadline:
                raise AssertionError(f"no new {reason!r} clock sync within {timeout_s} s (others: "
                                     f"{[(r['reason'], r['error']) for r in rows]}):\n{self.d.log_text()[-3000:]}")
            time.sleep(0.05)

    def check(self, reason: str, event: str, running_at: float, frozen_min_s: float) -> dict[str, Any]:
        """The correction after a freeze that ended (the guest runs again) at ``running_at``."""
        row = self.new_row(reason, WITHIN_S)
        recorded_after_s = time.monotonic() - running_at
        offset = _probe_ms(self.g.dom, running_at + WITHIN_S)
        probed_after_s = time.monotonic() - running_at
        self.report.append(f"{reason:<10} {event:<22} before {row['before_ms']:+9.1f} ms  daemon after "
                           f"{row['after_ms']:+6.1f} ms  probe {offset:+6.1f} ms  recorded {recorded_after_s:.1f} s "
                           f"(at {time.monotonic() - self.t0:.0f} s)")
        # (``ok`` says whether the daemon's 5 ms target was reached; under a loaded host the five
        # sets may leave a little more, which is what the 20 ms bound is for)
        assert row["result"]["synced"] is True and row["error"] is None, row
        assert row["result"]["event"] == event, row["result"]
        # the guest had fallen behind by the freeze (less what it may have been ahead before it: the
        # last correction's residual and TCG drift, seen up to +36 ms in CI)
        assert row["before_ms"] <= -frozen_min_s * 1000 + 100, row
        assert abs(row["after_ms"]) <= TOLERANCE_MS, row
        assert abs(offset) <= TOLERANCE_MS, (reason, offset)
        assert probed_after_s <= WITHIN_S
        return row


def test_every_freeze_kind_is_corrected_within_10_s_and_listed(hv, lab_guest, daemon, tmp_path) -> None:  # type: ignore[no-untyped-def]
    t_test = time.monotonic()
    g = lab_guest(memory_mib=512)
    disk = g.serial_path.with_name(f"{g.name}-snapshots.qcow2")
    subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", str(disk), "16M"], check=True)
    snap = None
    try:
        g.dom = hv.conn.defineXML(_freeze_capable_xml(g.dom.XMLDesc(0), disk))
        g.boot()
        d = daemon(watch=[g.name])
        d.start()
        f = Freezes(g, d)
        assert abs(_probe_ms(g.dom, time.monotonic() + 30)) < 2000

        # 1. pause / resume
        shortest, _ = pause(g.dom, 4)
        f.check("resume", "resumed/unpaused", time.monotonic(), shortest)

        # 2. managedsave, 4 s, start (what libvirt-guests does over a host reboot)
        t0 = time.monotonic()
        g.dom.managedSave(0)
        assert g.dom.hasManagedSaveImage(0)
        time.sleep(4)
        g.dom.create()
        f.check("restore", "started/restored", time.monotonic(), time.monotonic() - t0 - 1)

        # 3. save to a file, 4 s, restore
        image = tmp_path / "guest.save"
        t0 = time.monotonic()
        g.dom.save(str(image))
        time.sleep(4)
        hv.conn.restore(str(image))
        f.check("restore", "started/restored", time.monotonic(), time.monotonic() - t0 - 1)

        # 4. internal memory snapshot, 5 s of running, revert: the guest's memory (and clock) go back
        snap = g.dom.snapshotCreateXML("<domainsnapshot><name>clock</name></domainsnapshot>", 0)
        t_snap = time.monotonic()
        time.sleep(5)
        g.dom.revertToSnapshot(snap, 0)
        f.check("snapshot", "started/from-snapshot", time.monotonic(), time.monotonic() - t_snap - 1)

        # 5. guest S3 suspend + wake-up. The guest kernel re-reads its RTC on resume, so the suspend
        # itself costs little; put the clock 30 s behind first (no event: nobody would notice) to see
        # that the wake-up correction really corrects.
        g.agent().raw("guest-set-time", {"time": time.time_ns() - 30 * 10**9}, timeout_s=10)
        g.dom.pMSuspendForDuration(libvirt.VIR_NODE_SUSPEND_TARGET_MEM, 0, 0)
        g.wait_state("pmsuspended", 30)
        time.sleep(2)
        g.dom.pMWakeup(0)
        f.check("pm-wakeup", "started/wakeup", time.monotonic(), 25)

        # 6. a restore no daemon saw (it started after libvirt-guests): found at start-up by the reason
        # libvirt still reports for the running guest, and corrected
        assert d.stop() == 0
        g.dom.managedSave(0)
        time.sleep(3)
        g.dom.create()
        assert g.state() == ("running", libvirt.VIR_DOMAIN_RUNNING_RESTORED)
        t_daemon = time.monotonic()
        d.start()
        f.check("restore", "startup:running/restored", t_daemon, 2)

        # 7. the host "slept" 5 s (simulated, see the module docstring) while the guest clock stood still
        g.agent().raw("guest-set-time", {"time": time.time_ns() - 5 * 10**9}, timeout_s=10)
        rows, took_s = host_resume(hv, g.name, tmp_path)
        assert [r["domain"] for r in rows] == [g.name]  # no other domain was resynced
        (row,) = rows
        assert row["reason"] == "host-resume" and row["error"] is None and row["result"]["synced"], row
        assert row["result"]["event"] == "host-resume" and row["result"]["frozen_s"] == 5.0
        assert row["before_ms"] < -4500 and abs(row["after_ms"]) <= TOLERANCE_MS, row
        offset = _probe_ms(g.dom, time.monotonic() + WITHIN_S)
        assert abs(offset) <= TOLERANCE_MS and took_s < WITHIN_S, (offset, took_s)
        f.report.append(f"host-resume (simulated) before {row['before_ms']:+9.1f} ms  after "
                        f"{row['after_ms']:+6.1f} ms  probe {offset:+6.1f} ms  in {took_s:.1f} s")

        # every one of them in `vmcrash list --clock`, with its reason and cause
        listed = [line for line in d.cli("list", "--clock", check=True).stdout.splitlines() if g.name in line]
        causes = [(line.split()[3], line.split()[4]) for line in listed]
        for want in [("resume", "resumed/unpaused"), ("restore", "started/restored"),
                     ("snapshot", "started/from-snapshot"), ("pm-wakeup", "started/wakeup")]:
            assert want in causes, listed
        assert causes.count(("restore", "started/restored")) == 2, listed
        assert ("restore", "startup:running/restored") in causes, listed
        assert len(listed) == 6, listed  # one correction per freeze, no duplicates
        print("\n" + "\n".join(f.report) + f"\ntest took {time.monotonic() - t_test:.1f} s")
        assert d.stop() == 0
    finally:
        if snap is not None:
            try:
                snap.delete(libvirt.VIR_DOMAIN_SNAPSHOT_DELETE_METADATA_ONLY)
            except libvirt.libvirtError:
                pass
        try:
            if g.dom.hasManagedSaveImage(0):
                g.dom.managedSaveRemove(0)
        except libvirt.libvirtError:
            pass
        g.cleanup()
        disk.unlink(missing_ok=True)
