"""The clock's agent boundary fed literal hostile replies: every one is refused with a project error.

The agent here is a script of raw replies (what ``libvirt_qemu.qemuAgentCommand`` would hand back)
and the host clock is a counter, so "slow" is exact and the tests need no guest.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import Any

import pytest

from vmcrash.clock import Probe, measure
from vmcrash.clock._transport import (
    DEFAULT_MAX_RTT_NS,
    MAX_TIME_REPLY_BYTES,
    collect_probes,
    parse_get_time_reply,
    parse_set_time_reply,
    timed_get_time,
    timed_set_time,
)
from vmcrash.errors import AgentProtocolError, AgentRefused, BadDataError, VmcrashError

T0 = 1_700_000_000_000_000_000


class ScriptedAgent:
    """Answers each command with the next scripted reply; raises it if it is an exception."""

    name = "hostile"

    def __init__(self, replies: list[object], clock: FakeClock | None = None, *, delay_ns: int = 0) -> None:
        self.replies: Iterator[object] = iter(replies)
        self.sent: list[tuple[str, dict[str, Any] | None]] = []
        self.clock = clock
        self.delay_ns = delay_ns

    def raw(self, execute: str, arguments: dict[str, Any] | None = None, *, timeout_s: int | None = None) -> object:
        self.sent.append((execute, arguments))
        if self.clock is not None:
            self.clock.now += self.delay_ns
        reply = next(self.replies)
        if isinstance(reply, BaseException):
            raise reply
        return reply

    def ping(self, *, timeout_s: int = 2) -> None:
        self.raw("guest-ping")


class FakeClock:
    def __init__(self, start: int = T0) -> None:
        self.now = start

    def __call__(self) -> int:
        return self.now


HOSTILE_GET_TIME_REPLIES = [
    pytest.param("x" * 10_000_000, id="huge-10MB"),
    pytest.param('{"return": ' + "1" * 5000 + "}", id="huge-integer-over-size-bound"),
    pytest.param('{"return": ' + "1" * 4000 + "}", id="4000-digit-integer-within-size-bound"),
    pytest.param('{"return": 1, "pad": "' + "a" * MAX_TIME_REPLY_BYTES + '"}', id="padded"),
    pytest.param('{"return": "1700000000000000000"}', id="string-time"),
    pytest.param('{"return": [1700000000000000000]}', id="list-time"),
    pytest.param('{"return": {"time": 1700000000000000000}}', id="object-time"),
    pytest.param('{"return": null}', id="null-time"),
    pytest.param('{"return": 1.7e18}', id="float-time"),
    pytest.param('{"return": -1700000000000000000}', id="negative"),
    pytest.param('{"return": 0}', id="zero"),
    pytest.param('{"return": 9223372036854775808}', id="int64-overflow"),
    pytest.param('{"return": 340282366920938463463374607431768211456}', id="2**128"),
    pytest.param('{"return": 1e400}', id="float-overflow-inf"),
    pytest.param('{"return": NaN}', id="NaN"),
    pytest.param('{"return": Infinity}', id="Infinity"),
    pytest.param('{"return": -Infinity}', id="-Infinity"),
    pytest.param('{"return": true}', id="bool-true"),
    pytest.param('{"return": false}', id="bool-false"),
    pytest.param('{"return": 1, "return": true}', id="duplicate-key-last-wins"),
    pytest.param('{"retur": 1700000000000000000}', id="no-return"),
    pytest.param("[1700000000000000000]", id="top-level-list"),
    pytest.param("1700000000000000000", id="top-level-int"),
    pytest.param("null", id="top-level-null"),
    pytest.param("", id="empty"),
    pytest.param('\xff{"return": {"bogus": [1e999, "\\u0000"]}} {{{ not json', id="lab-garbage-agent-line"),
    pytest.param("[" * 4000, id="deep-nesting"),
    pytest.param('{"return": 1700000000000000000', id="truncated"),
    pytest.param(b'{"return": 1700000000000000000}', id="bytes-not-text"),
    pytest.param(None, id="None"),
    pytest.param(1700000000000000000, id="int-not-text"),
]


@pytest.mark.parametrize("reply", HOSTILE_GET_TIME_REPLIES)
def test_hostile_get_time_reply_is_bad_data(reply: object) -> None:
    with pytest.raises(AgentProtocolError) as info:
        parse_get_time_reply(reply, domain="hostile")
    assert isinstance(info.value, BadDataError) and info.value.exit_code == 2
    msg = str(info.value)
    assert msg.startswith("hostile: guest-get-time") and "\n" not in msg and len(msg) < 300


@pytest.mark.parametrize("reply", HOSTILE_GET_TIME_REPLIES)
def test_hostile_reply_stops_a_measurement(reply: object) -> None:
    agent = ScriptedAgent(['{"return": 1700000000000000000}', reply, '{"return": 1700000000000000000}'])
    with pytest.raises(AgentProtocolError):
        measure(agent, probes=3)
    assert len(agent.sent) == 2  # stopped at the first bad answer


def test_honest_reply_and_extremes_accepted() -> None:
    assert parse_get_time_reply('{"return":1700000000123456789}') == 1_700_000_000_123_456_789
    assert parse_get_time_reply('{"return": 1}') == 1
    assert parse_get_time_reply('{"return": 9223372036854775807}') == 2**63 - 1


@pytest.mark.parametrize("reply, kind", [
    ('{"error": {"class": "GenericError", "desc": "no clock for you"}}', AgentRefused),
    ('{"error": "just a string"}', AgentRefused),
    ('{"error": {"desc": "' + "d" * 10_000 + '"}}', AgentProtocolError),  # refusals are bounded too
])
def test_error_replies(reply: str, kind: type[VmcrashError]) -> None:
    with pytest.raises(kind) as info:
        parse_get_time_reply(reply, domain="hostile")
    assert len(str(info.value)) < 300


@pytest.mark.parametrize("reply", ['{"return": 5}', '{"return": []}', '{"return": true}', '{"return": NaN}',
                                   '{"return": null}', "x" * 100_000, "{}", b"{}"])
def test_hostile_set_time_reply(reply: object) -> None:
    with pytest.raises(AgentProtocolError):
        parse_set_time_reply(reply, domain="hostile")


def test_set_time_reply_ok() -> None:
    parse_set_time_reply('{"return": {}}')


def test_probe_brackets_the_call() -> None:
    clock = FakeClock()
    agent = ScriptedAgent(['{"return": 1600000000000000000}'], clock, delay_ns=700_000)
    assert timed_get_time(agent, clock_ns=clock) == Probe(T0, 1_600_000_000_000_000_000, T0 + 700_000)
    assert agent.sent == [("guest-get-time", None)]


def test_slow_replies_are_dropped() -> None:
    clock = FakeClock()
    replies = ['{"return": 1700000000000000000}'] * 4
    agent = ScriptedAgent(replies, clock, delay_ns=0)
    delays = iter([600_000_000, 1_000_000, 2_000_000_000, 2_000_000])

    def slow_raw(execute: str, arguments: dict[str, Any] | None = None, *, timeout_s: int | None = None) -> object:
        clock.now += next(delays)
        return ScriptedAgent.raw(agent, execute, arguments, timeout_s=timeout_s)

    agent.raw = slow_raw  # type: ignore[method-assign]
    probes = collect_probes(agent, 4, clock_ns=clock)
    assert [p.t_recv_ns - p.t_send_ns for p in probes] == [1_000_000, 2_000_000]


def test_all_slow_replies_are_an_error() -> None:
    clock = FakeClock()
    agent = ScriptedAgent(['{"return": 1700000000000000000}'] * 3, clock, delay_ns=DEFAULT_MAX_RTT_NS + 1)
    with pytest.raises(AgentProtocolError, match="none of 3 replies came back within 500 ms"):
        measure(agent, probes=3, clock_ns=clock)


def test_really_slow_agent_is_bounded_by_max_rtt() -> None:
    # A real sleep: the guest takes 30 ms, the caller allows 10 ms.
    class Sleepy(ScriptedAgent):
        def raw(self, execute: str, arguments: dict[str, Any] | None = None, *,
                timeout_s: int | None = None) -> object:
            time.sleep(0.03)
            return super().raw(execute, arguments, timeout_s=timeout_s)

    with pytest.raises(AgentProtocolError, match="within 10 ms"):
        measure(Sleepy(['{"return": 1700000000000000000}'] * 2), probes=2, max_rtt_ns=10_000_000)


def test_host_clock_stepping_back_drops_the_probe() -> None:
    clock = FakeClock()
    agent = ScriptedAgent(['{"return": 1700000000000000000}'] * 2, clock, delay_ns=-1_000)
    with pytest.raises(AgentProtocolError):
        collect_probes(agent, 2, clock_ns=clock)


def test_set_time_sends_stamp_plus_lead() -> None:
    clock = FakeClock()
    agent = ScriptedAgent(['{"return": {}}'], clock, delay_ns=12_000_000)
    assert timed_set_time(agent, 450_000, clock_ns=clock) == (T0, T0 + 12_000_000)
    assert agent.sent == [("guest-set-time", {"time": T0 + 450_000})]


def test_set_time_refusal_says_what_to_do() -> None:
    libvirt_words = ("hostile: guest-set-time: internal error: unable to execute QEMU agent command "
                     "'guest-set-time': this feature or command is not currently supported")
    agent = ScriptedAgent([AgentRefused(libvirt_words.removeprefix("hostile: "), domain="hostile",
                                        command="guest-set-time")])
    with pytest.raises(AgentRefused) as info:
        timed_set_time(agent, 0)
    msg = str(info.value)
    assert msg.startswith("hostile: the guest agent refused to set the clock "
                          "(this feature or command is not currently supported); ")
    assert "/sbin/hwclock" in msg and "makestep" in msg and "\n" not in msg
    assert info.value.exit_code == 3


def test_set_time_refusal_in_reply_text_says_what_to_do() -> None:
    agent = ScriptedAgent(['{"error": {"desc": "Invalid time"}}'])
    with pytest.raises(AgentRefused, match=r"refused to set the clock \(.*Invalid time\); .*hwclock"):
        timed_set_time(agent, 0)


def test_set_time_out_of_range_is_refused_before_sending() -> None:
    agent = ScriptedAgent([])
    with pytest.raises(ValueError):
        timed_set_time(agent, 2**63, clock_ns=lambda: T0)
    with pytest.raises(ValueError):
        timed_set_time(agent, -T0, clock_ns=lambda: T0)
    assert agent.sent == []


def _system_error_from_bytes() -> SystemError:
    # What libvirt-python raises when libvirt's error message quotes the guest's non-UTF-8 bytes.
    try:
        try:
            b'internal error: cannot parse json \xff{"return": 1}'.decode()
        except UnicodeDecodeError as exc:
            raise SystemError("<built-in function virDomainQemuAgentCommand> returned a result "
                              "with an exception set") from exc
    except SystemError as err:
        return err
    raise AssertionError


def test_undecodable_agent_bytes_are_bad_data_not_a_traceback() -> None:
    agent = ScriptedAgent([_system_error_from_bytes()])
    with pytest.raises(AgentProtocolError, match=r"^hostile: guest-get-time: the agent answered bytes that "
                                                 r"are not UTF-8 text$"):
        measure(agent)


def test_other_system_errors_are_not_disguised() -> None:
    with pytest.raises(SystemError):
        measure(ScriptedAgent([SystemError("something else")]))
