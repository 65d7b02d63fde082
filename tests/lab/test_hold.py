"""Capture mode ``hold`` against real libvirtd + QEMU + memfd-backed lab guests (never skipped).

Ground truth from outside vmcrash: libvirt's own memory-only dump of the same crashed guest
(``virsh dump``), ``cmp`` and ``readelf``, the guest's serial console, libvirt's domain state and
QEMU's pid, the kernel's accounting of the held memfd (``st_blocks``).
"""

from __future__ import annotations

import json
import re
import signal
import subprocess
import time
from pathlib import Path

import pytest
from labdaemon import done

pytestmark = pytest.mark.lab


def virsh(*args: str) -> str:
    return subprocess.run(["virsh", "-c", "qemu:///system", *args], capture_output=True, text=True,
                          check=True).stdout.strip()


def qemu_pid(name: str) -> int:
    return int(Path(f"/run/libvirt/qemu/{name}.pid").read_text())


def readelf(flag: str, path: Path) -> str:
    return subprocess.run(["readelf", flag, str(path)], capture_output=True, text=True, check=True).stdout


def console_kernel_lines(text: str) -> list[str]:
    return [ln.rstrip() for ln in text.splitlines() if re.match(r"^\[\s*\d+\.\d+\] ", ln)]


def dmesg_lines(doc: dict) -> list[str]:
    lines = doc.get("dmesg") or []
    return [ln if isinstance(ln, str) else ln.get("text", "") for ln in lines]


def analyze_cli(path: Path) -> dict:
    import sys

    res = subprocess.run([sys.executable, "-m", "vmcrash.cli.main", "analyze", str(path), "--json", "--dmesg"],
                         capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr
    return json.loads(res.stdout)


#: test id -> (lab guest spec, capture function, hugepages to reserve)
BACKINGS = {
    "memfd": ({"memory_backing": "memfd"}, "hold", 0),
    "anonymous": ({}, "copy", 0),
    # hugetlbfs: 2 MiB pages for the crashed guest and for the fresh QEMU started while it is held
    "hugepages": ({"memory_backing": "hugepages"}, "hold", 2 * 512 // 2),
    "file": ({"memory_backing": "file"}, "hold", 0),
    # two NUMA cells: one memfd memory backend per cell
    "memfd-numa": ({"memory_backing": "memfd", "numa_cells": 2}, "hold", 0),
    # memfd RAM copied (what a manual dump or recovery reset of such a guest does)
    "memfd-copy": ({"memory_backing": "memfd"}, "copy", 0),
}


@pytest.mark.parametrize("backing", list(BACKINGS))
def test_held_image_dump_is_qemus_dump(hv, lab_guest, tmp_path, backing, hugepages) -> None:  # type: ignore[no-untyped-def]
    """One crash: libvirt's plain dump before recovery == the dump written from the held (shared
    RAM, mode hold) or copied (mode copy) image after it, for each memory backing."""
    from vmcrash.capture.hold import copy_image, grab_dump_header, hold_image, triage_held, write_held
    from vmcrash.capture.recovery import recover

    spec, mode, pages = BACKINGS[backing]
    if pages:
        hugepages(pages)
    g = lab_guest(memory_mib=512, vcpus=2, fill_mib=64, **spec)
    hugepages.boot(g, 240)
    old_pid = qemu_pid(g.name)
    g.crash()
    g.wait_state("crashed", 60)
    header = grab_dump_header(g.dom, tmp_path)
    if mode == "hold":
        image = hold_image(g.dom, g.name, old_pid, header)
        assert len(image.fds) == (2 if spec.get("numa_cells") else 1)  # one RAM file per memory backend
    else:
        image = copy_image(g.dom, g.name, old_pid, header, limit_bytes=600 << 20)
        assert image.held_bytes() < 400 << 20  # only pages the guest touched
    assert virsh("domstate", "--reason", g.name) == "crashed (panicked)"  # the header grab left it so
    plain = tmp_path / "plain.elf"  # the reference, by libvirt/QEMU, taken before recovery
    subprocess.run(["virsh", "-c", "qemu:///system", "dump", "--memory-only", "--format", "elf", g.name,
                    str(plain)], check=True, capture_output=True)
    result, g.dom = recover(hv, g.dom, "restart")
    assert result.running and qemu_pid(g.name) != old_pid  # a fresh QEMU runs while the image is held
    triage, err = triage_held(image)
    assert err is None and triage is not None
    assert triage["panic_line"] and triage["panic_line"] in g.serial_text()
    held = tmp_path / "held.elf"
    stats = write_held(image, held)
    image.close()
    assert stats.zero_pages_skipped > 0
    assert held.stat().st_size == plain.stat().st_size
    assert subprocess.run(["cmp", "-s", str(plain), str(held)]).returncode == 0  # byte for byte
    assert readelf("-n", plain) == readelf("-n", held)
    notes = readelf("-n", held)
    assert notes.count("NT_PRSTATUS") == 2 and notes.count("QEMU") >= 2 and "VMCOREINFO" in notes
    assert readelf("-l", plain) == readelf("-l", held)
    # every PT_LOAD identical, page by page (implied by cmp; checked through the reader too)
    from vmcrash.vmcore import open_dump

    with open_dump(plain) as a, open_dump(held) as b:
        la, lb = a.reader.layout.loads, b.reader.layout.loads  # type: ignore[attr-defined]
        assert la == lb and len(la) >= 2
        for seg in la:
            for off in range(0, seg.file_size, 1 << 20):
                n = min(1 << 20, seg.file_size - off)
                assert a.reader._f.read(seg.offset + off, n) == b.reader._f.read(seg.offset + off, n)  # type: ignore[attr-defined]
    # makedumpfile 1.7.2 fails on QEMU's ELF (LAB.md) — and fails the same way on both files
    mk = [subprocess.run(["makedumpfile", "--dump-dmesg", str(p), str(tmp_path / f"{p.stem}.dmesg")],
                         capture_output=True, text=True) for p in (plain, held)]
    assert mk[0].returncode == mk[1].returncode
    if mk[1].returncode == 0:
        text = (tmp_path / "held.dmesg").read_text(errors="replace")
        assert "Kernel panic - not syncing" in text
    else:
        assert "PT_LOAD" in mk[1].stdout + mk[1].stderr
        # the held dump converted to kdump (what compaction does, zero pages kept readable): makedumpfile's
        # own --dump-dmesg reads it and prints the kernel lines the console showed
        from vmcrash.vmcore import convert_to_kdump

        kd = tmp_path / "held.kdump"
        convert_to_kdump(held, kd, codec="zlib", exclude_zero=False)
        out = tmp_path / "held-kdump.dmesg"
        r = subprocess.run(["makedumpfile", "--dump-dmesg", str(kd), str(out)], capture_output=True, text=True,
                           timeout=120)
        assert r.returncode == 0, r.stdout + r.stderr
        mk_lines = [ln.rstrip() for ln in out.read_text(errors="replace").splitlines() if ln.strip()]
        on_console = console_kernel_lines(g.serial_text())
        assert mk_lines and len([ln for ln in mk_lines if ln in on_console]) >= 0.95 * len(mk_lines)
        assert any("Kernel panic - not syncing" in ln for ln in mk_lines)
    # vmcrash analyze --dmesg gives the console's kernel lines
    doc = analyze_cli(held)
    console = console_kernel_lines(g.serial_text())
    lines = dmesg_lines(doc)
    assert lines and len([ln for ln in lines if ln in console]) >= 0.95 * len(lines)
    assert any("Kernel panic - not syncing" in ln for ln in lines)


def memfd_of(pid: int) -> int:
    """Open the memfd that holds a running guest's RAM (the test's own view of it)."""
    import os

    for n in os.listdir(f"/proc/{pid}/fd"):
        if os.readlink(f"/proc/{pid}/fd/{n}").startswith("/memfd:"):
            return os.open(f"/proc/{pid}/fd/{n}", os.O_RDONLY)
    raise AssertionError(f"QEMU {pid} has no memfd")


def test_watch_holds_recovers_at_once_and_writes_behind(hv, lab_guest, daemon) -> None:  # type: ignore[no-untyped-def]
    """Default policy (auto, restart) on a memfd guest: hold → fresh QEMU → triage → dump written behind."""
    import os

    g = lab_guest(memory_mib=768, fill_mib=64, memory_backing="memfd")
    anon = lab_guest(memory_mib=384)  # anonymous RAM: auto copies its present pages, and says why
    cp = lab_guest(memory_mib=384, memory_backing="memfd")  # memfd RAM, recovery reset: auto copies (never holds)
    d = daemon(capture="auto", recovery="auto", watch=[g.name, anon.name],
               extra=f'[domains."{cp.name}"]\nwatch = true\nrecovery = "reset"\n')
    d.start()
    g.start()
    anon.start()
    cp.start()
    g.wait_ready(240)
    anon.wait_ready(240)
    cp.wait_ready(240)
    cp_pid = qemu_pid(cp.name)
    old_pid = qemu_pid(g.name)
    mine = memfd_of(old_pid)  # keeps the image too: its allocated blocks are the ground truth
    try:
        blocks_before = os.fstat(mine).st_blocks
        g.crash()
        anon.crash()
        cp.crash()
        row = d.wait_row(g.name, done, 240)[0]
        assert row.state == "done", (row.state, row.error, d.log_text()[-3000:])
        assert row.capture["mode"] == "hold" and row.capture["choice"]["requested"] == "auto"
        assert "memfd-shared" in row.capture["choice"]["reason"]
        # recovered by a fresh QEMU, long before the dump was complete
        assert virsh("domstate", g.name) == "running" and qemu_pid(g.name) != old_pid
        assert row.running_again_ns < row.dump_ended_ns
        # the dump was written without faulting in the guest's untouched memory
        after_bytes = os.fstat(mine).st_blocks * 512
        assert after_bytes <= blocks_before * 512 + (16 << 20)
        assert after_bytes < 0.5 * (768 << 20)  # reading through QEMU's mapping would allocate all of it
        assert row.capture["extra"]["data_read_bytes"] <= after_bytes + (1 << 20)
    finally:
        os.close(mine)
    path = Path(row.dump_path)
    notes = readelf("-n", path)
    assert notes.count("NT_PRSTATUS") == 1 and "VMCOREINFO" in notes
    assert path.stat().st_blocks * 512 < 0.5 * path.stat().st_size  # sparse
    assert row.triage["panic_line"] and row.triage["panic_line"] in g.serial_text()
    log_kinds = [e["kind"] for e in d.catalog().events(row.id)]
    # triage from the held image was recorded before the dump was written
    assert log_kinds.index("triage") < log_kinds.index("dumped")
    side = json.loads(Path(row.sidecar_path).read_text())
    assert side["capture"]["mode"] == "hold"
    shown = d.cli("show", str(row.id), check=True).stdout
    assert "hold (auto): RAM in memfd-shared memory" in shown
    arow = d.wait_row(anon.name, done, 240)[0]
    assert arow.state == "done" and arow.capture["mode"] == "copy", (arow.state, arow.error, arow.capture)
    assert arow.capture["choice"]["requested"] == "auto" and "anonymous" in arow.capture["choice"]["reason"]
    assert arow.running_again_ns < arow.dump_ended_ns  # recovered before the dump was written
    assert arow.triage["panic_line"] and arow.triage["panic_line"] in anon.serial_text()
    crow = d.wait_row(cp.name, done, 240)[0]
    assert crow.state == "done" and crow.capture["mode"] == "copy", (crow.state, crow.error, crow.capture)
    assert "recovery 'reset' keeps the same QEMU" in crow.capture["choice"]["reason"]
    # reset in place: the same QEMU runs on while the copy is written
    assert crow.running_again_ns < crow.dump_ended_ns and qemu_pid(cp.name) == cp_pid
    assert crow.recovery_action == "reset"
    assert crow.triage["panic_line"] and crow.triage["panic_line"] in cp.serial_text()
    assert "NT_PRSTATUS" in readelf("-n", Path(crow.dump_path))
    assert d.stop() == 0


def test_hold_memory_guard_and_reset_fall_back_to_stream(hv, lab_guest, daemon) -> None:  # type: ignore[no-untyped-def]
    """A headroom the image cannot fit under → stream, recorded; auto never pairs hold with reset
    (it would copy, and the same guard refuses the copy)."""
    g = lab_guest(memory_mib=384, memory_backing="memfd")
    r = lab_guest(memory_mib=384, memory_backing="memfd")
    d = daemon(capture="auto", recovery="auto",
               extra=f'[domains."{g.name}"]\nwatch = true\n[domains."{r.name}"]\nwatch = true\nrecovery = "reset"\n',
               staging="hold_headroom_mib = 100000000\n")
    d.start()
    g.start()
    r.start()
    g.wait_ready(240)
    r.wait_ready(240)
    g.crash()
    r.crash()
    row = d.wait_row(g.name, done, 240)[0]
    assert row.state == "done" and row.capture["mode"] == "stream"
    reason = row.capture["extra"]["choice"]["reason"]
    assert "hold refused by host memory guard" in reason and "headroom" in reason
    rrow = d.wait_row(r.name, done, 240)[0]
    assert rrow.state == "done" and rrow.capture["mode"] == "stream" and rrow.recovery_action == "reset"
    # with reset, auto never holds: it would copy, which the guard refuses as well
    assert "copy refused by host memory guard" in rrow.capture["extra"]["choice"]["reason"]
    assert virsh("domstate", g.name) == "running" and virsh("domstate", r.name) == "running"
    # a config that pairs them explicitly is refused
    bad = d.dir / "bad.toml"
    bad.write_text(f'[domains."{r.name}"]\ncapture = "hold"\nrecovery = "reset"\n')
    res = d.cli("--config", str(bad), "doctor", r.name)
    assert res.returncode == 2 and "cannot work with recovery 'reset'" in res.stderr
    assert d.stop() == 0


def test_sigterm_and_sigkill_while_an_image_is_held(hv, lab_guest, daemon) -> None:  # type: ignore[no-untyped-def]
    """SIGTERM: bounded, what was given up is recorded. SIGKILL: next start says the image was lost."""
    from vmcrash.lab.guest import READY_MARK

    g = lab_guest(memory_mib=512, fill_mib=96, memory_backing="memfd")
    # a slow write-behind (4 MiB/s) keeps the image held long enough to stop the daemon meanwhile
    d = daemon(capture="auto", recovery="auto", watch=[g.name], staging="hold_write_mib_s = 4\nhold_shutdown_s = 1\n")
    d.start()
    g.boot(240)
    ready_at = 0
    for signo in (signal.SIGTERM, signal.SIGKILL):
        if signo == signal.SIGKILL:  # the guest restarted by the first round must be up again
            g.wait_serial(READY_MARK, 240, after=ready_at + 1)
            g.wait_ready(120)
        ready_at = g.serial_bytes().rfind(READY_MARK.encode())
        g.crash()
        row = d.wait_row(g.name, lambda r: (r.capture or {}).get("held") and r.state == "recovered"
                         and r.dump_temp_path is not None and r.triage is not None, 120)[0]
        assert virsh("domstate", g.name) == "running"  # the held image did not keep it down
        t0 = time.monotonic()
        d.stop(signo, timeout_s=60)
        took = time.monotonic() - t0
        if signo == signal.SIGTERM:
            assert took < 20, took  # hold_shutdown_s = 1, plus the daemon's own stop
        d.start()
        row = d.wait_row(g.name, lambda r, i=row.id: r.id == i and done(r), 60)[0]
        assert row.state == "lost" and row.dump_path is None, (row.state, row.error)
        if signo == signal.SIGTERM:
            assert "gave up writing the held image: daemon stopping" in row.error
        else:
            assert "held image lost before it was written" in row.error
        assert row.triage["panic_line"] and row.triage["panic_line"] in g.serial_text()  # triage kept
        assert list(d.dump_dir.glob("*.elf")) == [] and list(d.dump_dir.glob(".*.partial")) == []
        assert virsh("domstate", g.name) == "running"
    assert d.stop() == 0


def test_doctor_shows_backing_and_moves_a_domain_to_memfd(hv, lab_guest, daemon) -> None:  # type: ignore[no-untyped-def]
    import os

    g = lab_guest(memory_mib=256)
    d = daemon(capture="auto", recovery="auto", watch=[g.name])
    out = d.cli("doctor", g.name, check=False).stdout
    assert ("RAM anonymous: capture copy (anonymous RAM (private to QEMU): present pages copied while stopped; "
            "recovery auto resets it in place after the copy") in out, out
    res = d.cli("doctor", "--fix", "--memfd", g.name, check=False)
    assert "fixed: guest RAM moved to a shared memfd" in res.stdout, res.stdout + res.stderr
    assert "KSM does not merge shared memory" in res.stdout and "shmem_enabled" in res.stdout
    xml = virsh("dumpxml", "--inactive", g.name)
    assert "<source type='memfd'/>" in xml and "<access mode='shared'/>" in xml
    doc = json.loads(d.cli("doctor", "--json", g.name).stdout)
    assert doc[0]["memory"] == {"backing": "memfd-shared", "capture": "hold", "requested": "auto",
                                "reason": doc[0]["memory"]["reason"]}
    g.start()  # the next start runs with its RAM in a memfd (QEMU's own fd table says so)
    pid = qemu_pid(g.name)
    links = [os.readlink(f"/proc/{pid}/fd/{n}") for n in os.listdir(f"/proc/{pid}/fd")]
    assert any(link.startswith("/memfd:memory-backend-memfd") for link in links)


def test_held_image_never_keeps_the_guest_from_starting(hv, lab_guest, daemon, hugepages) -> None:  # type: ignore[no-untyped-def]
    """Hugepage-backed guest, a pool with room for one guest only: the held image keeps the pages the
    fresh QEMU needs, so its start fails; the image is released (its triage kept) and the start retried."""
    g = lab_guest(memory_mib=256, memory_backing="hugepages")
    hugepages(256 // 2)  # exactly one guest's worth of 2 MiB pages
    d = daemon(capture="auto", recovery="auto", watch=[g.name])
    hugepages.boot(g, 240)
    d.start()
    old_pid = qemu_pid(g.name)
    g.crash()
    row = d.wait_row(g.name, done, 240)[0]
    assert row.state == "lost" and row.dump_path is None, (row.state, row.error, d.log_text()[-3000:])
    assert row.capture["mode"] == "hold" and "hugepages-shared" in row.capture["choice"]["reason"]
    assert "released so the guest could start" in row.error
    # the guest runs: a fresh QEMU, started once the image had given its pages back
    assert virsh("domstate", g.name) == "running" and qemu_pid(g.name) != old_pid
    assert row.recovery_result == "running"
    events = [(e["kind"], e["message"]) for e in d.catalog().events(row.id)]
    kinds = [k for k, _ in events]
    assert kinds.index("held") < kinds.index("released") < kinds.index("recovered")
    released = next(m for k, m in events if k == "released")
    assert "restart failed" in released or "not running after restart" in released
    # the triage of the held image was kept before it was released
    assert row.triage and row.triage["panic_line"] and row.triage["panic_line"] in g.serial_text()
    assert list(d.dump_dir.glob("*.elf")) == [] and list(d.dump_dir.glob(".*.partial")) == []
    g.wait_serial("vmcrash-lab: ready", 240, after=g.serial_bytes().find(b"Kernel panic"))
    assert d.stop() == 0


def test_manual_dump_copies_while_paused_and_equals_qemus_dump(hv, lab_guest, daemon, tmp_path) -> None:  # type: ignore[no-untyped-def]
    """``vmcrash dump`` (capture auto → copy): the guest is paused only while its present pages are
    copied, the dump is written after it runs again, and it equals QEMU's own dump of the same state."""
    anon = lab_guest(memory_mib=512, fill_mib=64)
    shm = lab_guest(memory_mib=384, memory_backing="memfd")
    d = daemon(capture="auto", recovery="auto")
    anon.start()
    shm.start()
    anon.wait_ready(240)
    shm.wait_ready(240)
    for g in (anon, shm):
        pid = qemu_pid(g.name)
        virsh("suspend", g.name)  # the same memory for both dumps
        plain = tmp_path / f"{g.name}.plain.elf"
        subprocess.run(["virsh", "-c", "qemu:///system", "dump", "--memory-only", "--format", "elf", g.name,
                        str(plain)], check=True, capture_output=True)
        res = d.cli("dump", g.name, "--json", "--no-compact")
        assert res.returncode == 0, res.stderr
        row = json.loads(res.stdout)
        assert row["state"] == "done" and row["capture"]["mode"] == "copy", row
        assert row["capture"]["choice"]["requested"] == "auto"
        assert row["running_again_ns"] < row["dump_ended_ns"]  # running again before the dump was written
        assert virsh("domstate", g.name) == "running" and qemu_pid(g.name) == pid
        path = Path(row["dump_path"])
        assert path.stat().st_size == plain.stat().st_size
        assert subprocess.run(["cmp", "-s", str(plain), str(path)]).returncode == 0, g.name
        assert path.stat().st_blocks * 512 < 0.6 * path.stat().st_size  # zero pages are holes
        plain.unlink()
    # a running guest is paused for the copy and resumed after it
    res = d.cli("dump", anon.name, "--json", "--no-compact", "--capture", "copy")
    assert res.returncode == 0, res.stderr
    row = json.loads(res.stdout)
    events = [e["kind"] for e in d.catalog().events(row["id"])]
    assert events.index("paused") < events.index("held") < events.index("recovered") < events.index("dumped")
    assert virsh("domstate", anon.name) == "running"
    assert "NT_PRSTATUS" in readelf("-n", Path(row["dump_path"]))


def test_manual_dump_of_a_panicked_guest_holds_and_restarts(hv, lab_guest, daemon) -> None:  # type: ignore[no-untyped-def]
    """``vmcrash dump`` of a guest left panicked (no daemon handled it) handles it as the daemon would,
    with the default policy: its memfd RAM is held, a fresh QEMU starts at once, the dump is written
    from the held image after. ``--capture hold`` is refused, in one line, for a running guest."""
    g = lab_guest(memory_mib=384, fill_mib=32, memory_backing="memfd")
    d = daemon(capture="auto", recovery="auto")  # never started: nobody handles the panic
    g.start()
    g.wait_ready(240)
    old_pid = qemu_pid(g.name)
    g.crash()
    g.wait_state("crashed", 120)
    assert virsh("domstate", "--reason", g.name) == "crashed (panicked)"
    res = d.cli("dump", g.name, "--json", "--no-compact")
    assert res.returncode == 0, res.stderr
    row = json.loads(res.stdout)
    assert row["source"] == "manual" and row["state"] == "done", row
    assert row["capture"]["mode"] == "hold" and row["capture"]["choice"]["requested"] == "auto", row["capture"]
    assert row["recovery_action"] == "restart"
    assert row["running_again_ns"] < row["dump_ended_ns"]  # a fresh QEMU ran before the dump was written
    assert virsh("domstate", g.name) == "running" and qemu_pid(g.name) != old_pid
    assert row["triage"]["panic_line"] and row["triage"]["panic_line"] in g.serial_text()
    notes = readelf("-n", Path(row["dump_path"]))
    assert "NT_PRSTATUS" in notes and "VMCOREINFO" in notes
    g.wait_serial("vmcrash-lab: ready", 240, after=g.serial_bytes().find(b"Kernel panic"))
    refused = d.cli("dump", g.name, "--capture", "hold")
    assert refused.returncode == 2, refused.stdout + refused.stderr
    assert len(refused.stderr.strip().splitlines()) == 1 and "only for a panicked guest" in refused.stderr
    assert "Traceback" not in refused.stderr
    assert virsh("domstate", g.name) == "running" and len(d.catalog().crashes()) == 1
