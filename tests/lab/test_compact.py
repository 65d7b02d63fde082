"""Fast, compact dumps: the streamed sparse ELF and its background compaction, on real crashed guests.

Ground truth: a plain ``virsh dump --memory-only --format elf`` of the same crashed guest (libvirt
writing every byte itself), ``readelf``, and the guest's serial console.
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


def analyze(d, path: Path) -> dict:  # type: ignore[no-untyped-def]
    res = d.cli("analyze", str(path), "--json", "--dmesg")
    assert res.returncode == 0, res.stderr
    return json.loads(res.stdout)


def dmesg_lines(doc: dict) -> list[str]:
    lines = doc.get("dmesg") or []
    return [ln if isinstance(ln, str) else ln.get("text", "") for ln in lines]


def console_kernel_lines(text: str) -> list[str]:
    return [ln.rstrip() for ln in text.splitlines() if re.match(r"^\[\s*\d+\.\d+\] ", ln)]


def test_streamed_and_compacted_dumps_analyze_like_a_plain_dump(hv, lab_guest, daemon, tmp_path) -> None:  # type: ignore[no-untyped-def]
    g = lab_guest(memory_mib=512, fill_mib=128)
    d = daemon(f'[domains."{g.name}"]\nwatch = true\nrecovery = "preserve"\n')
    d.start()
    g.boot()
    g.crash()
    row = d.wait_row(g.name, lambda r: done(r) and r.compact_state in ("done", "failed"), 240)[0]
    assert row.state == "done" and row.compact_state == "done", (row.compact, d.log_text()[-2000:])
    streamed = Path(row.dump_path)
    compacted = Path(row.compact_path)
    assert streamed.suffix == ".elf" and compacted.suffix == ".kdump"
    # sparse: far fewer blocks than bytes (the guest's free memory is zero pages)
    assert streamed.stat().st_blocks * 512 < 0.6 * streamed.stat().st_size
    assert row.capture["zero_pages_skipped"] > 0
    # the reference: libvirt writes the same crashed guest's memory itself
    plain = tmp_path / "plain.elf"
    subprocess.run(["virsh", "-c", "qemu:///system", "dump", "--memory-only", "--format", "elf", g.name,
                    str(plain)], check=True, capture_output=True)
    assert plain.stat().st_size == streamed.stat().st_size
    assert subprocess.run(["cmp", "-s", str(plain), str(streamed)]).returncode == 0  # byte for byte
    hdr = subprocess.run(["readelf", "-h", str(streamed)], capture_output=True, text=True, check=True).stdout
    assert "CORE (Core file)" in hdr
    a_plain, a_stream, a_comp = analyze(d, plain), analyze(d, streamed), analyze(d, compacted)
    assert dmesg_lines(a_stream) == dmesg_lines(a_plain) == dmesg_lines(a_comp)
    assert a_stream["panic_line"] == a_plain["panic_line"] == a_comp["panic_line"]
    assert a_plain["panic_line"] and a_plain["panic_line"] in g.serial_text()
    # the kernel messages match the console (the ground truth) up to the panic
    console = console_kernel_lines(g.serial_text())
    rendered = [ln for ln in dmesg_lines(a_comp) if ln in console]
    assert len(rendered) >= 0.95 * len(dmesg_lines(a_comp))
    # compaction accounting reached the catalogue, the sidecar and `show`
    assert row.compact["output_bytes"] == compacted.stat().st_size
    side = json.loads(Path(row.sidecar_path).read_text())
    assert side["compaction"]["ok"] is True
    assert "compacted" in d.cli("show", str(row.id), check=True).stdout
    d.stop()


def test_kdump_capture_is_rearranged_to_seekable(hv, lab_guest, daemon) -> None:  # type: ignore[no-untyped-def]
    g = lab_guest(memory_mib=384)
    d = daemon(f'[domains."{g.name}"]\nwatch = true\nformat = "kdump-zlib"\n')
    d.start()
    g.boot()
    g.crash()
    row = d.wait_row(g.name, lambda r: done(r) and r.compact_state in ("done", "failed"), 240)[0]
    assert row.compact_state == "done", row.compact
    path = Path(row.dump_path)
    assert path.suffix == ".kdump" and path.read_bytes()[:8] == b"KDUMP   "
    assert not list(d.dump_dir.glob("*.flat"))  # the flattened stream was replaced
    assert analyze(d, path)["panic_line"]
    d.stop()


def test_sigkill_during_compaction_resumes_and_never_leaves_a_false_complete_file(hv, lab_guest, daemon) -> None:  # type: ignore[no-untyped-def]
    g = lab_guest(memory_mib=1024, fill_mib=700)
    d = daemon(f'[domains."{g.name}"]\nwatch = true\n', staging='compact_codec = "zlib"\nkeep_elf = false\n')
    d.start()
    g.boot(240)
    g.crash()
    row = d.wait_row(g.name, lambda r: r.compact_state == "running", 240)[0]
    dst = Path(row.dump_path).with_suffix(".kdump")
    deadline = time.monotonic() + 120
    part = Path(str(dst) + ".part")
    ckpt = Path(str(dst) + ".part.ckpt")
    while not ckpt.exists() and time.monotonic() < deadline:  # killed after its first checkpoint
        time.sleep(0.05)
    assert ckpt.exists()
    # the worker runs at the lowest CPU priority and in the idle I/O class
    pid = subprocess.run(["pgrep", "-f", "vmcrash.capture.compact"], capture_output=True, text=True,
                         check=True).stdout.split()[0]
    assert Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[16] == "19"  # nice
    assert "idle" in subprocess.run(["ionice", "-p", pid], capture_output=True, text=True).stdout
    d.stop(signal.SIGKILL)
    time.sleep(0.5)
    assert not dst.exists()  # only the .part: nothing that looks complete
    assert subprocess.run(["pgrep", "-f", "vmcrash.capture.compact"], capture_output=True).returncode != 0
    assert d.rows(g.name)[0].compact_state == "running"
    d.start()
    row = d.wait_row(g.name, lambda r: r.compact_state in ("done", "failed"), 300)[0]
    assert row.compact_state == "done", row.compact
    assert row.compact.get("resumed_from") is not None
    assert dst.exists() and not part.exists() and not ckpt.exists()
    assert analyze(d, dst)["panic_line"]
    # keep_elf = false: the ELF is gone, the catalogue and the sidecar point at the compact file
    assert row.dump_path == str(dst) and not list(d.dump_dir.glob("*.elf"))
    side = json.loads(Path(row.sidecar_path).read_text())
    assert side["file"] == dst.name and side["original_file"].endswith(".elf")
    d.stop()


def test_free_pages_excluded_match_the_guests_own_count(hv, lab_guest, tmp_path) -> None:  # type: ignore[no-untyped-def]
    """Compaction may drop the pages the guest's allocator had free: their number agrees with the
    guest kernel's own MemFree, and the kernel log read from the compact file is unchanged."""
    from vmcrash import vmcore

    g = lab_guest(memory_mib=512, fill_mib=64)
    g.boot()
    agent = g.agent()
    pid = agent.exec("/bin/cat", ["/proc/meminfo"], capture=True)
    deadline = time.monotonic() + 30
    while not (st := agent.exec_status(pid)).exited and time.monotonic() < deadline:
        time.sleep(0.1)
    memfree_kib = int(next(ln for ln in st.out.decode().splitlines() if ln.startswith("MemFree:")).split()[1])
    g.crash()
    g.wait_state("crashed", 60)
    elf = tmp_path / "g.elf"
    subprocess.run(["virsh", "-c", "qemu:///system", "dump", "--memory-only", "--format", "elf", g.name, str(elf)],
                   check=True, capture_output=True)
    plain = vmcore.convert_to_kdump(elf, tmp_path / "plain.kdump", codec="zstd")
    lean = vmcore.convert_to_kdump(elf, tmp_path / "lean.kdump", codec="zstd", exclude_free=True)
    assert lean.free_scan_problem is None
    free_kib = lean.pages_free_excluded * 4
    # free pages holding non-zero data are a part of MemFree (zero ones were excluded already)
    assert 0 < free_kib <= memfree_kib * 1.02, (free_kib, memfree_kib)
    assert lean.pages_written + lean.pages_free_excluded <= plain.pages_written + 16
    assert lean.dst_size_bytes <= plain.dst_size_bytes
    a = vmcore.analyze(tmp_path / "plain.kdump", dmesg=True)
    b = vmcore.analyze(tmp_path / "lean.kdump", dmesg=True)
    assert a.dmesg == b.dmesg and a.panic_line == b.panic_line and a.call_trace == b.call_trace
