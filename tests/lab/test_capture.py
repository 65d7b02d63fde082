"""The capture daemon against real libvirtd + QEMU + lab guests (never skipped).

Ground truth comes from outside vmcrash: libvirt's state (``virsh domstate``), QEMU's process id,
the guest's serial console (a second boot), ``readelf`` on the dump, the files' modes.
"""

from __future__ import annotations

import json
import signal
import socket
import stat
import subprocess
import sys
import threading
import time
import urllib.request
from pathlib import Path

import pytest
from labdaemon import Daemon, done, start_libvirtd_stable

from vmcrash.lab.guest import PANIC_LINE, LabGuest, unique_name

pytestmark = pytest.mark.lab

BOOT_MARK = "Linux version"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def virsh(*args: str) -> str:
    return subprocess.run(["virsh", "-c", "qemu:///system", *args], capture_output=True, text=True,
                          check=True).stdout.strip()


def qemu_pid(name: str) -> int | None:
    try:
        return int(Path(f"/run/libvirt/qemu/{name}.pid").read_text())
    except (OSError, ValueError):
        return None


def wait_for(pred, timeout_s: float, what: str) -> None:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout_s
    while not pred():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.2)


def check_dump_files(row, memory_mib: int) -> dict:  # type: ignore[no-untyped-def]
    """The dump is a valid ELF core of the guest's size, 0600 in a 0700 dir, with a sidecar."""
    path = Path(row.dump_path)
    assert path.exists() and not path.name.startswith(".")
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert stat.S_IMODE(path.parent.stat().st_mode) == 0o700
    header = subprocess.run(["readelf", "-h", str(path)], capture_output=True, text=True, check=True).stdout
    assert "CORE (Core file)" in header and "X86-64" in header
    notes = subprocess.run(["readelf", "-n", str(path)], capture_output=True, text=True, check=True).stdout
    assert "NT_PRSTATUS" in notes and "VMCOREINFO" in notes
    assert path.stat().st_size >= memory_mib * 1024 * 1024
    side = json.loads(Path(row.sidecar_path).read_text())
    assert stat.S_IMODE(Path(row.sidecar_path).stat().st_mode) == 0o600
    for key in ("domain", "uuid", "panic_time", "dump_start", "dump_end", "freeze_seconds", "format",
                "size_bytes", "sha256", "vmcoreinfo"):
        assert key in side, key
    assert side["size_bytes"] == path.stat().st_size
    assert side["domain"] == row.domain
    assert not list(path.parent.glob(".*.partial"))
    return side


def test_each_recovery_action(hv, lab_guest, daemon) -> None:  # type: ignore[no-untyped-def]
    """A panic while watching → dump, sidecar, catalogue row, and the guest recovered per policy."""
    actions = ["restart", "reset", "preserve", "destroy"]
    guests: dict[str, LabGuest] = {a: lab_guest(memory_mib=384) for a in actions}
    port = free_port()
    extra = f'metrics_listen = "127.0.0.1:{port}"\n' + "".join(
        f'[domains."{g.name}"]\nwatch = true\nrecovery = "{a}"\n' for a, g in guests.items())
    d: Daemon = daemon(extra)
    d.start()
    for g in guests.values():
        g.start()
    for g in guests.values():
        g.wait_ready(240)
    pids = {a: qemu_pid(g.name) for a, g in guests.items()}
    for g in guests.values():
        g.crash()
    rows = {a: d.wait_row(g.name, done, 240)[0] for a, g in guests.items()}
    for action, g in guests.items():
        row = rows[action]
        assert row.state == "done", (row.state, row.error)
        assert row.recovery_action == action
        side = check_dump_files(row, 384)
        assert side["recovery"]["action"] == action
        assert PANIC_LINE in g.serial_text()
    # libvirt (not vmcrash) says what became of each guest
    assert virsh("domstate", guests["restart"].name) == "running"
    assert qemu_pid(guests["restart"].name) != pids["restart"]  # a fresh QEMU process
    assert virsh("domstate", guests["reset"].name) == "running"
    assert qemu_pid(guests["reset"].name) == pids["reset"]  # same process, reset in place
    assert virsh("domstate", "--reason", guests["preserve"].name) == "crashed (panicked)"
    assert virsh("domstate", guests["destroy"].name) == "shut off"
    for action in ("restart", "reset"):
        g = guests[action]
        wait_for(lambda g=g: g.serial_text().count(BOOT_MARK) >= 2, 120, f"{action} guest to boot again")
        assert rows[action].freeze_s is not None and rows[action].freeze_s > 0
    # Prometheus metrics count the four panics and their dumps
    deadline = time.monotonic() + 10
    while True:
        metrics = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5).read().decode()
        if 'vmcrash_panics_total{source="event"} 4.0' in metrics or time.monotonic() > deadline:
            break
        time.sleep(0.2)
    assert 'vmcrash_panics_total{source="event"} 4.0' in metrics
    assert 'vmcrash_dumps_total{result="written"} 4.0' in metrics
    assert "vmcrash_libvirt_connected 1.0" in metrics
    # `vmcrash list --json` and `show` report the same rows
    listed = json.loads(d.cli("list", "--json", check=True).stdout)
    assert {r["domain"] for r in listed} == {g.name for g in guests.values()}
    shown = d.cli("show", str(rows["reset"].id), check=True).stdout
    assert "reset -> running" in shown and rows["reset"].dump_path in shown
    # one panic, one row: a restart of the daemon does not handle the preserved panic again
    d.stop()
    d.start()
    time.sleep(2)
    assert len(d.rows(guests["preserve"].name)) == 1
    assert d.stop() == 0


def test_panic_while_daemon_stopped_is_handled_at_start(hv, lab_guest, daemon) -> None:  # type: ignore[no-untyped-def]
    g = lab_guest(memory_mib=384)
    g.boot()
    g.crash()
    g.wait_state("crashed", 60)
    d = daemon(watch=[g.name])
    d.start()
    row = d.wait_row(g.name, done, 120)[0]
    assert row.source == "reconcile" and row.state == "done"
    check_dump_files(row, 384)
    assert virsh("domstate", g.name) == "running"
    assert d.stop() == 0


def test_libvirtd_restart_while_watching(hv, lab_guest, daemon) -> None:  # type: ignore[no-untyped-def]
    from vmcrash.lab.daemons import LIBVIRTD, stop_daemon

    g = lab_guest(memory_mib=384)
    g.boot()
    d = daemon(watch=[g.name])
    d.start()
    stop_daemon(LIBVIRTD, sig=signal.SIGKILL)
    d.wait_log("reconnecting", 30)
    start_libvirtd_stable()  # a fresh libvirtd (the session fixture stops whatever runs at the end)
    d.wait_log("reconciled:", 60, count=2)
    # The session's connection died with libvirtd: reconnect it (and the guest's handle).
    hv.reconnect()
    g.dom = hv.lookup(g.name)
    assert virsh("domstate", g.name) == "running"
    g.crash()
    row = d.wait_row(g.name, done, 120)[0]
    assert row.source == "event" and row.state == "done"
    assert row.dump_path and Path(row.dump_path).exists()
    assert virsh("domstate", g.name) == "running"
    assert d.stop() == 0


@pytest.fixture
def small_fs(tmp_path: Path):  # type: ignore[no-untyped-def]
    mnt = tmp_path / "small"
    mnt.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=64m,mode=0700", "tmpfs", str(mnt)], check=True)
    yield mnt
    subprocess.run(["umount", "-l", str(mnt)], check=False)


def test_too_small_dump_dir_skips_dump_but_recovers(hv, lab_guest, daemon, small_fs) -> None:  # type: ignore[no-untyped-def]
    g = lab_guest(memory_mib=384)
    d = daemon(watch=[g.name], dump_dir=small_fs / "dumps", min_free_mib=8)
    d.start()
    g.boot()
    g.crash()
    row = d.wait_row(g.name, done, 120)[0]
    assert row.dump_path is None
    assert row.skip_reason and "not enough space" in row.skip_reason
    assert row.recovery_result == "running"
    assert virsh("domstate", g.name) == "running"
    assert list((small_fs / "dumps").iterdir()) == []
    shown = d.cli("show", str(row.id), check=True).stdout
    assert "skipped: not enough space" in shown
    d.stop()


def test_sigkill_mid_dump_then_restart_recovers(hv, lab_guest, daemon) -> None:  # type: ignore[no-untyped-def]
    # kdump-zlib makes QEMU compress in one thread: slow enough to kill the daemon mid-dump.
    g = lab_guest(memory_mib=1024, fill_mib=600)
    d = daemon(f'[domains."{g.name}"]\nwatch = true\nformat = "kdump-zlib"\n')
    d.start()
    g.boot(240)
    g.crash()
    row = d.wait_row(g.name, lambda r: r.state == "capturing", 60)[0]
    time.sleep(1.0)
    d.stop(signal.SIGKILL)
    temp = Path(row.dump_temp_path)
    assert virsh("domstate", g.name).startswith("crashed")
    d.start()
    final = d.wait_row(g.name, done, 240)[0]
    assert final.id == row.id and final.attempts >= 2
    assert final.state == "done" and final.dump_path and Path(final.dump_path).exists()
    assert not temp.exists()
    assert not list(d.dump_dir.glob(".*.partial")) and not list(d.dump_dir.glob("*.fifo"))
    assert virsh("domstate", g.name) == "running"
    assert "removed unfinished temp file" in d.cli("show", str(row.id), check=True).stdout
    d.stop()


@pytest.mark.parametrize("mode", ["direct", "stream"])
def test_sigterm_mid_dump(hv, lab_guest, daemon, mode: str) -> None:  # type: ignore[no-untyped-def]
    """SIGTERM mid-dump: a streamed dump is aborted (vmcrash closes the stream); a direct one cannot be
    (libvirt refuses to abort memory-only dumps) and is finished. Either way the guest is recovered and
    no partial file is left."""
    g = lab_guest(memory_mib=1024, fill_mib=600)
    # kdump-zlib: QEMU compresses in one thread, slow enough to signal the daemon mid-dump
    d = daemon(f'[domains."{g.name}"]\nwatch = true\nformat = "kdump-zlib"\n', capture=mode)
    d.start()
    g.boot(240)
    g.crash()
    d.wait_row(g.name, lambda r: r.state == "capturing", 60)
    time.sleep(0.5)
    assert d.stop(signal.SIGTERM, 120) == 0
    row = d.rows(g.name)[0]
    if mode == "direct":
        assert row.state == "done" and row.dump_path and Path(row.dump_path).exists(), row
    else:
        assert row.state == "failed" and "aborted" in (row.error or ""), row
        assert not list(d.dump_dir.iterdir())
    assert row.recovery_result == "running"
    assert virsh("domstate", g.name) == "running"
    assert not list(d.dump_dir.glob(".*"))
    assert "stopping -> stopped" in d.log_text()


def test_three_panics_at_once_respect_parallel_limit(hv, lab_guest, daemon) -> None:  # type: ignore[no-untyped-def]
    guests = [lab_guest(memory_mib=512, fill_mib=200) for _ in range(3)]
    d = daemon("max_parallel_dumps = 1\n", watch=[g.name for g in guests])
    d.start()
    for g in guests:
        g.start()
    for g in guests:
        g.wait_ready(240)
    # Watch libvirt's own job info for all three while they dump: never two at once.
    seen_max = [0]
    stop = threading.Event()

    def poll() -> None:
        import libvirt

        conn = libvirt.open("qemu:///system")
        doms = [conn.lookupByName(g.name) for g in guests]
        while not stop.is_set():
            active = 0
            for dom in doms:
                try:
                    if dom.jobInfo()[0] in (libvirt.VIR_DOMAIN_JOB_BOUNDED, libvirt.VIR_DOMAIN_JOB_UNBOUNDED):
                        active += 1
                except libvirt.libvirtError:
                    pass
            seen_max[0] = max(seen_max[0], active)
            time.sleep(0.02)
        conn.close()

    t = threading.Thread(target=poll)
    t.start()
    for g in guests:
        g.crash()
    rows = [d.wait_row(g.name, done, 240)[0] for g in guests]
    stop.set()
    t.join()
    assert all(r.state == "done" and r.dump_path for r in rows), [(r.state, r.error) for r in rows]
    assert seen_max[0] == 1, seen_max
    spans = sorted((r.dump_started_ns, r.dump_ended_ns) for r in rows)
    assert all(a[1] <= b[0] for a, b in zip(spans, spans[1:]))
    assert all(virsh("domstate", g.name) == "running" for g in guests)
    d.stop()


def test_nasty_domain_names_get_safe_files(hv, lab_guest, daemon, lab_image) -> None:  # type: ignore[no-untyped-def]
    from vmcrash.lab.guest import GuestSpec

    base = unique_name()
    name = f"{base} ..'\"naïve 名 .."  # libvirt itself refuses '/' in names
    g = LabGuest(GuestSpec(memory_mib=384), hv=hv, image=lab_image, name=name, keep_serial=False)
    g.serial_path = g.run_dir / f"{base}.serial"
    try:
        d = daemon(watch=[name])
        d.start()
        g.boot()
        g.crash()
        row = d.wait_row(name, lambda r: done(r) and r.compact_state in ("done", "failed"), 180)[0]
        path = Path(row.dump_path)
        assert path.parent == d.dump_dir
        assert path.name.isascii() and "/" not in path.name and ".." not in path.name
        assert not path.name.startswith(".")
        expected = [path.name, Path(row.sidecar_path).name, Path(row.compact_path).name]
        assert sorted(p.name for p in d.dump_dir.iterdir()) == sorted(expected)
        assert all(Path(p).parent == d.dump_dir for p in (row.sidecar_path, row.compact_path))
        assert json.loads(Path(row.sidecar_path).read_text())["domain"] == name
        d.stop()
    finally:
        g.cleanup()


def test_crash_loop_stops_dumping_and_applies_fallback(hv, lab_guest, daemon) -> None:  # type: ignore[no-untyped-def]
    g = lab_guest(memory_mib=384)
    d = daemon(f'[crash_loop]\nmax_panics = 2\nwindow_minutes = 10\nfallback = "preserve"\n'
               f'[domains."{g.name}"]\nwatch = true\nrecovery = "reset"\n')
    d.start()
    g.boot()
    g.crash()
    first = d.wait_row(g.name, done, 120)[0]
    assert first.dump_path and first.recovery_action == "reset"
    wait_for(lambda: g.serial_text().count("vmcrash-lab: ready") >= 2, 120, "second boot")
    g.wait_ready(120)
    g.crash()
    rows = d.wait_row(g.name, done, 120, count=2)
    second = rows[0]
    assert second.id != first.id
    assert second.dump_path is None and "crash loop" in (second.skip_reason or "")
    assert second.recovery_action == "preserve"
    assert virsh("domstate", "--reason", g.name) == "crashed (panicked)"
    assert len([p for p in d.dump_dir.iterdir() if p.suffix == ".elf"]) == 1
    assert "crash loop" in d.log_text()
    d.stop()


def test_manual_dump_of_running_guest(hv, lab_guest, daemon) -> None:  # type: ignore[no-untyped-def]
    g = lab_guest(memory_mib=384)
    d = daemon(watch=[g.name])
    g.boot()
    res = d.cli("dump", g.name, "--json")
    assert res.returncode == 0, res.stderr
    row = json.loads(res.stdout)
    assert row["source"] == "manual" and row["state"] == "done"
    assert row["recovery_result"] == "running"
    assert virsh("domstate", g.name) == "running"
    assert Path(row["dump_path"]).exists()
    assert row["clock"] and row["clock"]["after_ms"] is not None and abs(row["clock"]["after_ms"]) < 50
    assert g.serial_text().count(BOOT_MARK) == 1  # not rebooted


def test_doctor_fix_makes_a_bare_domain_pass(hv, lab_guest, daemon) -> None:  # type: ignore[no-untyped-def]
    g = lab_guest(memory_mib=384, panic_model="none", vmcoreinfo=False, agent=False, on_crash="destroy")
    d = daemon(watch=[g.name])
    before = d.cli("doctor", g.name, "--json")
    assert before.returncode == 1
    failing = {c["name"] for c in json.loads(before.stdout)[0]["checks"] if not c["ok"]}
    assert {"panic-device", "vmcoreinfo", "agent-channel", "on-crash"} <= failing
    fixed = d.cli("doctor", g.name, "--fix")
    assert fixed.returncode == 0, fixed.stdout + fixed.stderr
    assert "next boot" in fixed.stdout or "when the domain starts" in fixed.stdout
    xml = virsh("dumpxml", "--inactive", g.name)
    assert "<panic model='isa'>" in xml and "<vmcoreinfo state='on'/>" in xml
    assert "org.qemu.guest_agent.0" in xml and "<on_crash>preserve</on_crash>" in xml
    assert d.cli("doctor", g.name).returncode == 0
    # and it really works: the fixed domain boots, its agent answers, its panic is preserved for us
    g.spec = g.with_spec(agent=True)
    g.start()
    g.wait_ready(180)
    g.crash()
    g.wait_state("crashed", 60)


def test_systemd_readiness_and_unit_file(hv, daemon, tmp_path) -> None:  # type: ignore[no-untyped-def]
    """Type=notify: the daemon says READY=1 once it watches and STOPPING=1 on SIGTERM; the unit
    file passes systemd's own verifier."""
    sock_path = tmp_path / "notify.sock"
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(str(sock_path))
    sock.settimeout(60)
    try:
        d = daemon(env={"NOTIFY_SOCKET": str(sock_path)})
        d.start()
        assert sock.recv(4096).startswith(b"READY=1")
        assert d.stop() == 0
        assert sock.recv(4096) == b"STOPPING=1"
    finally:
        sock.close()
    unit = (Path(__file__).parents[2] / "packaging" / "vmcrash.service").read_text()
    import shutil as _sh

    exe = _sh.which("vmcrash") or str(Path(sys.executable).parent / "vmcrash")
    (tmp_path / "vmcrash.service").write_text(unit.replace("/usr/local/bin/vmcrash", exe))
    res = subprocess.run(["systemd-analyze", "verify", str(tmp_path / "vmcrash.service")],
                         capture_output=True, text=True)
    assert res.returncode == 0, res.stdout + res.stderr
    assert "Type=notify" in unit
