"""``vmcrash clock`` against guests whose agent is missing, refuses, answers junk or lies (real QEMU).

Every failure must be one ``error:`` line and the documented exit code, never a traceback.
Ground truth: the domain XML (virsh), the guest console, and an offset probe that bypasses vmcrash.
"""

from __future__ import annotations

import json
import subprocess
import time
from collections.abc import Iterator
from typing import Any

import pytest
from _clocklab import booted_guests, independent_offset, install_liar, liar_requests, pause, vmcrash

from vmcrash.clock import measure, wait_for_agent
from vmcrash.errors import AgentProtocolError, AgentUnavailable, VmcrashError
from vmcrash.host.agent import Agent
from vmcrash.lab.guest import GuestSpec

pytestmark = pytest.mark.lab


@pytest.fixture(scope="module")
def guests(hv: Any, lab_image: Any) -> Iterator[dict[str, Any]]:
    specs = {
        "noagent": GuestSpec(agent=False, memory_mib=256),
        "nohwclock": GuestSpec(hwclock=False, memory_mib=256),
        "garbage": GuestSpec(agent_mode="garbage", memory_mib=256),
        "liar": GuestSpec(memory_mib=256),
    }
    with booted_guests(hv, lab_image, specs) as booted:
        yield booted


def _one_error_line(p: subprocess.CompletedProcess[str]) -> str:
    assert "Traceback" not in p.stderr, p.stderr
    lines = p.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), p.stderr
    return lines[0]


def _virsh(*args: str) -> str:
    return subprocess.run(["virsh", "-c", "qemu:///system", *args], check=True, capture_output=True,
                          text=True).stdout


def test_check_without_agent_channel_says_how_to_add_one(guests: dict[str, Any]) -> None:
    guest = guests["noagent"]
    assert "org.qemu.guest_agent.0" not in _virsh("dumpxml", guest.name)  # ground truth: no channel
    p = vmcrash("clock", "check", guest.name)
    assert p.returncode == 3 and p.stdout == ""
    line = _one_error_line(p)
    assert line.startswith(f"error: {guest.name}: no guest agent channel: add <channel type='unix'>")
    assert "qemu-guest-agent" in line

    p = vmcrash("clock", "sync", guest.name, "--json")
    assert p.returncode == 3
    _one_error_line(p)
    (doc,) = json.loads(p.stdout)
    assert doc["domain"] == guest.name and doc["ok"] is False
    assert doc["error"]["type"] == "AgentUnavailable" and doc["error"]["exit_code"] == 3


def test_wait_for_agent_does_not_wait_without_a_channel(guests: dict[str, Any]) -> None:
    t0 = time.monotonic()
    with pytest.raises(AgentUnavailable, match="no guest agent channel"):
        wait_for_agent(guests["noagent"].agent(), timeout_s=30)
    assert time.monotonic() - t0 < 2


def test_refused_set_time_says_what_to_do_and_leaves_the_clock(guests: dict[str, Any]) -> None:
    guest = guests["nohwclock"]
    agent = guest.agent()
    pid = agent.exec("/bin/sh", ["-c", "test -e /sbin/hwclock"])
    for _ in range(50):
        status = agent.exec_status(pid)
        if status.exited:
            break
        time.sleep(0.1)
    assert status.exited and status.exitcode == 1  # ground truth: the guest has no /sbin/hwclock

    # make sure the clock is well outside the target, so sync must try to set it: each pause puts it
    # 2 s further behind (a TCG guest may boot seconds ahead, so one pause can land it near zero)
    start, _ = independent_offset(guest.dom)
    for _ in range(3):
        pause(guest.dom, 2)
        before, _ = independent_offset(guest.dom)
        if abs(before) > 500_000_000:
            break
    assert before < start - 1_500_000_000 and abs(before) > 500_000_000, (start, before)
    p = vmcrash("clock", "sync", guest.name)
    assert p.returncode == 3 and p.stdout == ""
    line = _one_error_line(p)
    assert line.startswith(f"error: {guest.name}: the guest agent refused to set the clock "
                           "(this feature or command is not currently supported); ")
    assert "/sbin/hwclock" in line and "makestep" in line
    after, rtt = independent_offset(guest.dom)
    assert abs(after - before) < 10_000_000 + rtt  # nothing was set

    # Measuring needs no hwclock and still works.
    p = vmcrash("clock", "check", guest.name, "--json")
    assert p.returncode == 0, p.stderr
    (doc,) = json.loads(p.stdout)
    assert abs(doc["offset_ns"] - after) < 10_000_000 + rtt


def test_garbage_agent_is_rejected_without_a_crash(guests: dict[str, Any]) -> None:
    guest = guests["garbage"]
    assert "vmcrash-lab: garbage agent on" in guest.serial_text()
    for verb in ("check", "sync"):
        t0 = time.monotonic()
        p = vmcrash("clock", verb, guest.name)
        assert time.monotonic() - t0 < 30
        assert p.returncode in (2, 3) and p.stdout == ""
        assert _one_error_line(p).startswith(f"error: {guest.name}: ")
    with pytest.raises((AgentProtocolError, AgentUnavailable)):
        measure(guest.agent())


# Each step: the lines the impostor answers with, the verb, the exit code and error type expected.
T_2023 = '{"return": 1700000000000000000}'
LIAR_STEPS: list[tuple[list[str], str, int, str | None, str]] = [
    (['{"return": true}'], "check", 2, "AgentProtocolError", "bool is not an integer"),
    (['{"return": "1700000000000000000"}'], "check", 2, "AgentProtocolError", "str is not an integer"),
    (['{"return": -5}'], "check", 2, "AgentProtocolError", "-5 ns is out of range"),
    (['{"return": 1e999}'], "check", 2, "AgentProtocolError", "float is not an integer"),
    (['{"return": 99999999999999999999999}'], "check", 2, "AgentProtocolError", "out of range"),
    (["HUGE"], "check", 2, "AgentProtocolError", "bytes exceeds 4096"),
    ([T_2023] * 8 + ['{"return": 5}'], "sync", 2, "AgentProtocolError", "guest-set-time: 'return' is int"),
    (["SLEEP 3"], "check", 3, "AgentUnavailable", "not responding"),  # slower than the 2 s timeout
    ([T_2023] * 8, "check", 0, None, ""),  # after all that, an answer that parses is accepted
    (["FF"], "check", 2, "AgentProtocolError", "not UTF-8"),
    ([], "check", 3, "AgentUnavailable", "not available due to an error"),  # libvirt gave up on it
]


def test_lying_agent_is_rejected_at_every_step(guests: dict[str, Any], hv: Any) -> None:
    guest = guests["liar"]
    install_liar(guest, [line for step in LIAR_STEPS for line in step[0]])
    served = 0
    for replies, verb, code, kind, words in LIAR_STEPS:
        t0 = time.monotonic()
        p = vmcrash("clock", verb, guest.name, "--json")
        assert time.monotonic() - t0 < 30
        assert p.returncode == code, (replies[:1], p.stderr)
        (doc,) = json.loads(p.stdout)
        if kind is None:
            assert p.stderr == ""
            # the impostor's fixed time: 2023-11-14, about three years behind (as the host sees it)
            assert abs(doc["offset_ns"] - (1_700_000_000_000_000_000 - time.time_ns())) < 60 * 10**9
        else:
            assert words in _one_error_line(p)
            assert doc["error"]["type"] == kind
        served += len(replies)
        # ground truth from the guest console: the impostor really received (only) these requests
        assert liar_requests(guest, "guest-get-time") + liar_requests(guest, "guest-set-time") == served

    # libvirt has given up on the impostor: every API call is a clean project error.
    agent = Agent(hv.lookup(guest.name))
    for call in (lambda: measure(agent), lambda: wait_for_agent(agent, timeout_s=1)):
        with pytest.raises(VmcrashError):
            call()
