"""Capture paths no other lab test takes: tmpfs staging and ``shutdown_dump = "finish"``.

Ground truth from outside vmcrash: libvirt's own ``virsh dump --memory-only`` of the same frozen
guest (compared byte for byte with ``cmp``), ``readelf``, the test's own sha256, ``virsh domstate``.
"""

from __future__ import annotations

import json
import signal
import subprocess
from pathlib import Path

import pytest
from labdaemon import Daemon, done, sha256_of, virsh

pytestmark = pytest.mark.lab


def test_tmpfs_staging_gives_the_same_file_as_libvirt(hv, lab_guest, daemon, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    """A panic found at start-up is streamed into the tmpfs, then moved into the dump dir: the file
    is byte for byte what libvirt's own memory-only dump of the same frozen guest gives."""
    g = lab_guest(memory_mib=384, fill_mib=64)
    d: Daemon = daemon(f'[domains."{g.name}"]\nwatch = true\nformat = "elf"\n',
                       staging='tmpfs = "always"\ncompact = false\n')
    g.boot()
    g.crash()
    g.wait_state("crashed", 60)  # no daemon yet: the guest stays panicked (on_crash preserve)
    reference = tmp_path / "libvirt.elf"
    virsh("dump", "--memory-only", "--format", "elf", g.name, str(reference))
    assert virsh("domstate", g.name).startswith("crashed")  # libvirt's dump left it as it was
    d.start()
    row = d.wait_row(g.name, done, 240)[0]
    assert row.state == "done" and row.source == "reconcile", (row.state, row.error)
    assert row.capture["staged_in"] == str(d.staging / "vmcrash-staging"), row.capture
    path = Path(row.dump_path)
    assert path.parent == d.dump_dir
    cmp = subprocess.run(["cmp", str(reference), str(path)], capture_output=True, text=True)
    assert cmp.returncode == 0, cmp.stdout + cmp.stderr
    assert sha256_of(path) == row.dump_sha256 == json.loads(Path(row.sidecar_path).read_text())["sha256"]
    assert list((d.staging / "vmcrash-staging").iterdir()) == []  # nothing left in RAM
    assert virsh("domstate", g.name) == "running"
    assert d.stop() == 0


def test_sigterm_with_shutdown_dump_finish_completes_the_dump(hv, lab_guest, daemon,  # type: ignore[no-untyped-def]
                                                              tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    """``shutdown_dump = "finish"``: SIGTERM mid-stream lets the dump complete, then the daemon exits 0
    with the guest recovered and the dump final with its sidecar."""
    g = lab_guest(memory_mib=1024, fill_mib=600)
    # kdump-zlib: QEMU compresses in one thread, slow enough to signal the daemon mid-dump
    d: Daemon = daemon('shutdown_dump = "finish"\n'
                       f'[domains."{g.name}"]\nwatch = true\nformat = "kdump-zlib"\n',
                       staging='mode = "stream"\n')
    d.start()
    g.boot(240)
    g.crash()
    d.wait_row(g.name, lambda r: r.state == "capturing", 60)
    assert d.stop(signal.SIGTERM, 240) == 0
    row = d.rows(g.name)[0]
    assert row.state == "done", (row.state, row.error)
    assert row.recovery_result == "running"
    path = Path(row.dump_path)
    assert path.exists() and sha256_of(path) == row.dump_sha256
    side = json.loads(Path(row.sidecar_path).read_text())
    assert side["sha256"] == row.dump_sha256 and side["size_bytes"] == path.stat().st_size
    # QEMU wrote it to a pipe: makedumpfile's flattened format, which makedumpfile itself reassembles
    # only when the stream is complete (up to its end marker)
    with path.open("rb") as f:
        assert f.read(12) == b"makedumpfile"
    out = tmp_path / "reassembled.kdump"
    with path.open("rb") as f:
        res = subprocess.run(["makedumpfile", "-R", str(out)], stdin=f, capture_output=True, text=True)
    assert res.returncode == 0, res.stdout + res.stderr
    with out.open("rb") as f:
        assert f.read(8) == b"KDUMP   "
    assert virsh("domstate", g.name) == "running"
    assert not list(d.dump_dir.glob(".*"))
    assert "stopping -> stopped" in d.log_text()
