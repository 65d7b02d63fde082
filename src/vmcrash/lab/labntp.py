"""The lab's NTP server for booted guests, and a gate in front of it that holds NTP back until told.

:class:`HostNtpServer` is a chronyd of our own on 127.0.0.1 serving the host clock (``local
stratum 1``, ``-x``: it never touches the host clock); guests on QEMU's user network reach it at
10.0.2.2. :class:`NtpGate` is a UDP relay on 127.0.0.1 in front of it that drops every packet
until :meth:`NtpGate.open` is called, then relays both ways: a guest behind a closed gate has a
time source that does not answer yet, so its clock is stepped only after the moment the test
chose (what a slow or late NTP server does). :func:`ntp_query` asks a server for the time once.
"""

from __future__ import annotations

import logging
import selectors
import shutil
import socket
import struct
import subprocess
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Self

from vmcrash.errors import EnvironmentProblem

__all__ = ["HostNtpServer", "NtpGate", "ntp_query"]

log = logging.getLogger(__name__)

#: NTP's epoch (1900) to the Unix epoch (1970), in seconds.
NTP_UNIX_OFFSET_S = 2208988800
#: Largest datagram relayed (an NTP packet is 48 bytes, 68+ with extensions).
_MAX_DATAGRAM = 2048
#: Clients the gate keeps an upstream socket for at once. chronyd sends every request from a fresh
#: socket (a new source port, which QEMU's user network maps to a new host port), so a guest is a
#: new client at every poll: the least recently used socket is closed to make room for a new one.
_MAX_CLIENTS = 64


def ntp_query(port: int, host: str = "127.0.0.1", timeout_s: float = 1.0) -> float | None:
    """Ask an NTP server for the time once (SNTP client packet); its transmit time as a Unix time, or None."""
    packet = b"\x23" + b"\0" * 47  # LI=0, VN=4, mode=3 (client)
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.settimeout(timeout_s)
        try:
            s.sendto(packet, (host, port))
            data, _ = s.recvfrom(512)
        except OSError:
            return None
    if len(data) < 48 or data[0] & 0x07 != 4:
        return None
    seconds, fraction = struct.unpack("!II", data[40:48])
    return seconds - NTP_UNIX_OFFSET_S + fraction / 2**32


@dataclass
class HostNtpServer:
    """A chronyd of our own on 127.0.0.1:``port`` serving the host clock; never adjusts the host clock."""

    port: int = 0
    directory: Path | None = None
    proc: subprocess.Popen[bytes] | None = None

    def start(self, timeout_s: float = 15.0) -> None:
        """Start it and wait until it answers. :raises EnvironmentProblem:"""
        self.directory = Path(tempfile.mkdtemp(prefix="vmcrash-ntp-"))
        if not self.port:
            with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
                s.bind(("127.0.0.1", 0))
                self.port = s.getsockname()[1]
        conf = self.directory / "chrony.conf"
        conf.write_text(
            f"bindaddress 127.0.0.1\nport {self.port}\ncmdport 0\nlocal stratum 1\nallow 127.0.0.1\n"
            f"pidfile {self.directory}/chronyd.pid\n")
        log_path = self.directory / "chronyd.log"
        try:
            with open(log_path, "wb") as logf:
                self.proc = subprocess.Popen(["chronyd", "-d", "-x", "-u", "root", "-f", str(conf)],
                                             stdout=logf, stderr=subprocess.STDOUT)
        except FileNotFoundError as exc:
            raise EnvironmentProblem("chronyd not found; install chrony (make setup does)") from exc
        deadline = time.monotonic() + timeout_s
        while ntp_query(self.port, timeout_s=0.5) is None:
            if self.proc.poll() is not None or time.monotonic() > deadline:
                text = log_path.read_text(errors="replace")[-500:]
                self.stop()
                raise EnvironmentProblem(f"lab chronyd on 127.0.0.1:{self.port} did not answer: {text}")
            time.sleep(0.2)

    def stop(self) -> None:
        """Stop the chronyd this object started and remove its directory."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)
        self.proc = None
        if self.directory is not None:
            shutil.rmtree(self.directory, ignore_errors=True)
            self.directory = None

    def __enter__(self) -> Self:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


@dataclass
class NtpGate:
    """A UDP relay on 127.0.0.1:``port`` to the NTP server on 127.0.0.1:``upstream_port``, closed at start.

    While closed, every datagram from a client is dropped (counted in ``dropped``); once
    :meth:`open`, datagrams go upstream through one socket per client (at most 64 at once, the
    least recently used closed first) and the answers come back.
    ``opened_monotonic_s``: when it was opened (host ``time.monotonic()``), None while closed.
    """

    upstream_port: int
    port: int = 0
    dropped: int = 0
    relayed: int = 0
    opened_monotonic_s: float | None = None
    _sock: socket.socket | None = field(default=None, repr=False)
    _thread: threading.Thread | None = field(default=None, repr=False)
    _stop: threading.Event = field(default_factory=threading.Event, repr=False)
    _open: threading.Event = field(default_factory=threading.Event, repr=False)
    _errors: list[str] = field(default_factory=list, repr=False)

    def start(self) -> None:
        """Bind the relay's port (a free one unless ``port`` is set) and start relaying, closed."""
        self._sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self._sock.bind(("127.0.0.1", self.port))
        self.port = self._sock.getsockname()[1]
        self._thread = threading.Thread(target=self._run, name=f"ntp-gate-{self.port}", daemon=True)
        self._thread.start()

    def open(self) -> None:
        """Let NTP through from now on (idempotent)."""
        if not self._open.is_set():
            self.opened_monotonic_s = time.monotonic()
            self._open.set()
            log.info("NTP gate %d open after %d dropped datagrams", self.port, self.dropped)

    def stop(self) -> None:
        """Stop relaying and close every socket. :raises EnvironmentProblem: the relay thread failed."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(10)
            self._thread = None
        if self._sock is not None:
            self._sock.close()
            self._sock = None
        if self._errors:
            raise EnvironmentProblem(f"NTP gate {self.port} failed: {self._errors[0]}")

    def _run(self) -> None:
        assert self._sock is not None
        upstream: dict[tuple[str, int], socket.socket] = {}
        sel = selectors.DefaultSelector()
        sel.register(self._sock, selectors.EVENT_READ, None)
        try:
            while not self._stop.is_set():
                for key, _ in sel.select(timeout=0.2):
                    sock = key.fileobj
                    assert isinstance(sock, socket.socket)
                    if key.data is not None and upstream.get(key.data) is not sock:
                        continue  # closed to make room earlier in this round
                    try:
                        data, addr = sock.recvfrom(_MAX_DATAGRAM)
                    except (ConnectionRefusedError, BlockingIOError):
                        continue  # the server's port is closed for a moment (ICMP), or nothing to read
                    if key.data is None:  # from a client
                        if not self._open.is_set():
                            self.dropped += 1
                            continue
                        up = upstream.pop(addr, None)
                        if up is None:
                            if len(upstream) >= _MAX_CLIENTS:
                                oldest = next(iter(upstream))
                                sel.unregister(upstream[oldest])
                                upstream.pop(oldest).close()
                            up = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
                            up.connect(("127.0.0.1", self.upstream_port))
                            sel.register(up, selectors.EVENT_READ, addr)
                        upstream[addr] = up  # (re)inserted last: the dict's order is least recently used first
                        try:
                            up.send(data)
                        except ConnectionRefusedError:
                            continue
                        self.relayed += 1
                    else:  # an answer for the client key.data
                        self._sock.sendto(data, key.data)
        except OSError as exc:
            self._errors.append(str(exc))
        finally:
            sel.close()
            for up in upstream.values():
                up.close()

    def __enter__(self) -> Self:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()
