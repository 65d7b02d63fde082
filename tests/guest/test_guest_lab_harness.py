"""The systemd lab guest's harness, without booting: the NTP gate on real sockets, the package data, the lab root.

The gate relays real UDP between a client socket and an upstream socket of the test (the lab uses
it in front of its chronyd; the boots in test_guest_boot_proof.py use it for real). The lab root
is prepared from miniature trees holding the daemons' shipped configuration lines.
"""

from __future__ import annotations

import ast
import json
import socket
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from vmcrash.errors import BadDataError, EnvironmentProblem
from vmcrash.lab.labntp import _MAX_CLIENTS, NtpGate
from vmcrash.lab.systemd_guest import (
    EVIDENCE_MAGIC,
    EVIDENCE_SLOT_BYTES,
    HOST_ALIAS,
    NTP_GATE_MARK,
    lab_data,
    prepare_lab_root,
    read_evidence,
    systemd_guest_spec,
)


@pytest.fixture
def upstream() -> Iterator[socket.socket]:
    """A UDP server on 127.0.0.1 that answers each datagram with b're:' + the datagram."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.bind(("127.0.0.1", 0))
    sock.settimeout(0.2)
    stop = threading.Event()

    def serve() -> None:
        while not stop.is_set():
            try:
                data, addr = sock.recvfrom(2048)
            except TimeoutError:
                continue
            except OSError:
                return
            sock.sendto(b"re:" + data, addr)

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    yield sock
    stop.set()
    thread.join(5)
    sock.close()


def _ask(port: int, payload: bytes, timeout_s: float = 0.5) -> bytes | None:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as c:
        c.settimeout(timeout_s)
        c.sendto(payload, ("127.0.0.1", port))
        try:
            return c.recvfrom(2048)[0]
        except TimeoutError:
            return None


def test_the_gate_drops_everything_until_opened_then_relays_both_ways(upstream: socket.socket) -> None:
    with NtpGate(upstream_port=upstream.getsockname()[1]) as gate:
        assert _ask(gate.port, b"one") is None
        assert _ask(gate.port, b"two") is None
        assert gate.dropped == 2 and gate.relayed == 0 and gate.opened_monotonic_s is None
        gate.open()
        assert gate.opened_monotonic_s is not None
        assert _ask(gate.port, b"three", 2.0) == b"re:three"
        # a second client gets its own answers
        assert _ask(gate.port, b"four", 2.0) == b"re:four"
        assert gate.relayed == 2 and gate.dropped == 2


def test_the_gate_relays_for_a_client_that_uses_a_new_port_for_every_request(upstream: socket.socket) -> None:
    """chronyd sends every request from a fresh socket: far more clients than the gate keeps sockets for,
    one after the other, each still gets its answer (the least recently used socket makes room)."""
    with NtpGate(upstream_port=upstream.getsockname()[1]) as gate:
        gate.open()
        for n in range(3 * _MAX_CLIENTS):
            assert _ask(gate.port, b"poll%d" % n, 2.0) == b"re:poll%d" % n, n
        assert gate.relayed == 3 * _MAX_CLIENTS and gate.dropped == 0


def test_the_gate_survives_an_upstream_that_is_not_there() -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind(("127.0.0.1", 0))
        dead_port = s.getsockname()[1]
    with NtpGate(upstream_port=dead_port) as gate:
        gate.open()
        assert _ask(gate.port, b"x") is None
        assert _ask(gate.port, b"y") is None  # ICMP port unreachable did not end the relay
        assert gate.relayed >= 1


def test_package_data_is_there_and_the_collector_is_python_the_guest_can_run() -> None:
    init = lab_data("sysboot-init.sh")
    assert init.startswith("#!/bin/sh\n") and "exec switch_root /newroot /sbin/init" in init
    unit = lab_data("vmcrash-evidence.service")
    assert "ExecStart=/usr/bin/python3 /usr/local/sbin/vmcrash-evidence" in unit
    collector = lab_data("evidence_collector.py")
    tree = ast.parse(collector)  # Debian 12's python3 is 3.11, like ours
    assert any(isinstance(n, ast.FunctionDef) and n.name == "main" for n in tree.body)
    assert NTP_GATE_MARK.removeprefix("vmcrash-evidence: ") in collector


def _base(tmp_path: Path, files: dict[str, str]) -> Path:
    base = tmp_path / "base"
    for path, text in {"etc/passwd": "root:x:0:0:root:/root:/bin/bash\n", **files}.items():
        (base / path).parent.mkdir(parents=True, exist_ok=True)
        (base / path).write_text(text)
    return base


#: The lines of Debian 12's /etc/ntpsec/ntp.conf the lab changes (ntpsec 1.2.2+dfsg1-1+deb12u1).
NTPSEC_CONF = ("driftfile /var/lib/ntpsec/ntp.drift\ntos maxclock 11\ntos minclock 4 minsane 3\n"
               "pool 0.debian.pool.ntp.org iburst\nrestrict 127.0.0.1\n")
#: The lines of Debian 12's /etc/chrony/chrony.conf the lab changes (chrony 4.3-2+deb12u1).
CHRONY_CONF = "confdir /etc/chrony/conf.d\npool 2.debian.pool.ntp.org iburst\nmakestep 1 3\nrtcsync\n"


def test_lab_root_for_ntpsec_one_source_on_port_123_and_no_rtc_sync_for_a_live_fix(tmp_path: Path) -> None:
    base = _base(tmp_path, {"etc/ntpsec/ntp.conf": NTPSEC_CONF,
                            "etc/passwd": "root:x:0:0::/root:/bin/sh\nntpsec:x:104:107::/nonexistent:/bin/false\n"})
    root = prepare_lab_root(base, tmp_path / "root", ntp_port=123, live_fix=("--all-enabled",))
    conf = (root / "etc/ntpsec/ntp.conf").read_text().splitlines()
    active = [line for line in conf if line and not line.startswith("#")]
    assert active == ["driftfile /var/lib/ntpsec/ntp.drift", "tos maxclock 11", "restrict 127.0.0.1",
                      f"server {HOST_ALIAS} iburst minpoll 0 maxpoll 2", "tos minclock 1 minsane 1", "disable kernel"]
    drift = root / "var/lib/ntpsec/ntp.drift"
    assert drift.read_text() == "0.000\n" and (drift.stat().st_uid, drift.stat().st_gid) == (104, 107)
    lab = json.loads((root / "etc/vmcrash-lab.json").read_text())
    assert lab["daemon"] == "ntpsec" and lab["live_fix"] == ["--all-enabled"] and lab["ntp_gate"] is False
    assert lab["evidence"] == {"magic": EVIDENCE_MAGIC.decode(), "slot_bytes": EVIDENCE_SLOT_BYTES}
    assert (root / "usr/local/sbin/vmcrash-evidence").read_text() == lab_data("evidence_collector.py")
    assert (root / "opt/vmcrash/vmcrash/guest/audit.py").exists()
    with pytest.raises(EnvironmentProblem, match="port 123"):
        prepare_lab_root(base, tmp_path / "other", ntp_port=12345)


def test_lab_root_for_chrony_keeps_makestep_and_drops_rtcsync_only_for_a_live_fix(tmp_path: Path) -> None:
    base = _base(tmp_path, {"etc/chrony/chrony.conf": CHRONY_CONF})
    plain = prepare_lab_root(base, tmp_path / "plain", ntp_port=4123, ntp_gate=True)
    text = (plain / "etc/chrony/chrony.conf").read_text()
    assert "\nmakestep 1 3\n" in text and "\nrtcsync\n" in text and "\n# pool 2.debian" in text
    assert (plain / "etc/chrony/sources.d/vmcrash-lab.sources").read_text() == \
        f"server {HOST_ALIAS} port 4123 iburst minpoll 0 maxpoll 2\n"
    assert json.loads((plain / "etc/vmcrash-lab.json").read_text())["ntp_gate"] is True
    live = prepare_lab_root(base, tmp_path / "live", ntp_port=4123, live_fix=("--all-enabled",))
    assert "\n# rtcsync" in (live / "etc/chrony/chrony.conf").read_text()


def test_evidence_is_read_from_its_slot_and_garbage_is_one_clear_error(tmp_path: Path) -> None:
    disk = tmp_path / "evidence.img"
    disk.write_bytes(b"\0" * (2 * EVIDENCE_SLOT_BYTES))
    doc = b'{"boot": 2}'
    with open(disk, "r+b") as f:
        f.seek(EVIDENCE_SLOT_BYTES)
        f.write(EVIDENCE_MAGIC + b"%d\n" % len(doc) + doc)
    assert read_evidence(disk, 1) == {"boot": 2}
    with pytest.raises(BadDataError, match="no evidence"):
        read_evidence(disk, 0)
    with open(disk, "r+b") as f:
        f.write(EVIDENCE_MAGIC + b"99999999999\n")
    with pytest.raises(BadDataError, match="bad evidence length"):
        read_evidence(disk, 0)


def test_systemd_guest_spec_boots_its_own_init_from_two_disks(tmp_path: Path) -> None:
    spec = systemd_guest_spec(tmp_path / "root.img", tmp_path / "ev.img", restart_on_reboot=True)
    assert spec.disks == (tmp_path / "root.img", tmp_path / "ev.img")
    assert spec.on_reboot == "restart" and spec.network == "user" and spec.panic_model == "none"
    assert spec.kernel_cmdline is not None and "net.ifnames=0" in spec.kernel_cmdline
    assert systemd_guest_spec(tmp_path / "a", tmp_path / "b").on_reboot == "destroy"
