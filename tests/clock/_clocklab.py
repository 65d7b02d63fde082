"""Helpers of the clock lab tests: lab guests booted together, an independent offset probe, a lying
guest agent, and the ``vmcrash`` CLI as a subprocess. (A plain module, not a conftest: its name is
unique, so ``from _clocklab import ...`` cannot pick up another directory's conftest.)

The independent probe deliberately does not use ``vmcrash.clock``: it is the minimum-round-trip
``guest-get-time`` read straight through ``libvirt_qemu``, with its causal error bound (rtt/2).
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import libvirt_qemu

VMCRASH = [sys.executable, "-m", "vmcrash.cli.main"]


@contextmanager
def booted_guests(hv: Any, image: Any, specs: dict[str, Any], timeout_s: float = 300) -> Iterator[dict[str, Any]]:
    """Start every guest of ``specs`` at once, wait until all are ready, always clean them up."""
    from vmcrash.lab.guest import LabGuest

    guests = {key: LabGuest(spec, hv=hv, image=image, keep_serial=True) for key, spec in specs.items()}
    try:
        for guest in guests.values():
            guest.start()
        for guest in guests.values():
            guest.wait_ready(timeout_s)
        yield guests
    finally:
        for guest in guests.values():
            guest.cleanup()
            guest.serial_path.unlink(missing_ok=True)


def independent_offset(dom: Any, probes: int = 16) -> tuple[int, int]:
    """(guest − host offset, round trip) of the fastest of ``probes`` raw ``guest-get-time`` calls, ns.

    The true offset lies within ``offset ± rtt/2`` (the guest read its clock inside the bracket).
    """
    best: tuple[int, int, int] | None = None
    for _ in range(probes):
        t0 = time.time_ns()
        reply = libvirt_qemu.qemuAgentCommand(dom, '{"execute":"guest-get-time"}', 5, 0)
        t1 = time.time_ns()
        guest_ns = json.loads(reply)["return"]
        if best is None or t1 - t0 < best[2] - best[0]:
            best = (t0, guest_ns, t1)
    assert best is not None
    t0, guest_ns, t1 = best
    return guest_ns - (t0 + t1) // 2, t1 - t0


def pause(dom: Any, seconds: float) -> tuple[float, float]:
    """Suspend ``dom`` for about ``seconds``; return (shortest, longest) possible freeze, seconds."""
    a = time.monotonic()
    dom.suspend()
    b = time.monotonic()
    time.sleep(seconds)
    c = time.monotonic()
    dom.resume()
    d = time.monotonic()
    return c - b, d - a


def vmcrash(*args: str, timeout_s: float = 120) -> subprocess.CompletedProcess[str]:
    """Run the real CLI; returns the finished process (never raises on a non-zero exit)."""
    return subprocess.run([*VMCRASH, *args], check=False, capture_output=True, text=True, timeout=timeout_s)


# A guest agent impostor, started inside a qemu-ga guest through guest-exec: it kills qemu-ga, opens
# the agent port itself, answers libvirt's guest-sync and guest-ping correctly (so libvirt stays
# connected) and answers every other command with the next line of /tmp/junk:
#   FF          -> bytes \377 then {"return": 1}   (not UTF-8)
#   SLEEP n     -> answer a valid time after n seconds
#   HUGE        -> {"return": "AAAA..."} of 300 000 characters
#   anything else is sent as is. Every request is logged on the console ("liar got: ...").
LIAR_SCRIPT = r"""
sleep 0.3
killall qemu-ga
sleep 1
port=""
for d in /sys/class/virtio-ports/vport*; do
  [ "$(cat "$d/name")" = org.qemu.guest_agent.0 ] && port="/dev/${d##*/}"
done
exec 3<>"$port"
echo "liar: listening on $port" > /dev/console
n=0
while true; do
  # Until libvirt has reconnected to the port's host side, reads return EOF at once: keep the
  # port open and retry (exiting here closed the port again and libvirt never came back).
  if ! read -r line <&3; then sleep 0.1; continue; fi
  echo "liar got: $line" > /dev/console
  case "$line" in
    *guest-sync*)
      id=$(echo "$line" | sed -n 's/.*"id": *\([0-9]*\).*/\1/p')
      printf '{"return": %s}\n' "$id" >&3 ;;
    *guest-ping*)
      printf '{"return": {}}\n' >&3 ;;
    *)
      n=$((n + 1))
      reply=$(sed -n "${n}p" /tmp/junk)
      case "$reply" in
        FF) printf '\377{"return": 1}\n' >&3 ;;
        SLEEP*) sleep "${reply#SLEEP }"; printf '{"return": 1700000000000000000}\n' >&3 ;;
        HUGE) printf '{"return": "%s"}\n' "$(head -c 300000 /dev/zero | tr '\0' A)" >&3 ;;
        *) printf '%s\n' "$reply" >&3 ;;
      esac ;;
  esac
done
"""


def install_liar(guest: Any, replies: list[str], timeout_s: float = 60) -> None:
    """Replace the guest's qemu-ga with :data:`LIAR_SCRIPT` answering ``replies`` in order."""
    from vmcrash.clock import wait_for_agent

    agent = guest.agent()
    agent.exec("/bin/sh", ["-c", 'printf "%s\\n" "$@" > /tmp/junk', "sh", *replies])
    time.sleep(0.5)
    agent.exec("/bin/sh", ["-c", LIAR_SCRIPT])
    guest.wait_serial("liar: listening on", timeout_s)
    wait_for_agent(agent, timeout_s=timeout_s)  # libvirt reconnected to the impostor


def liar_requests(guest: Any, command: str) -> int:
    """How many ``command`` requests the impostor received so far (from the console)."""
    return sum(1 for line in guest.serial_text().splitlines()
               if line.startswith("liar got:") and f'"{command}"' in line)
