"""The guest-agent transport boundary: hostile replies are rejected with the project's errors."""

from __future__ import annotations

import json

import pytest

from vmcrash.errors import AgentProtocolError, AgentRefused
from vmcrash.host.agent_protocol import decode_reply, encode_command, parse_exec_status, parse_time_ns


def test_encode() -> None:
    assert json.loads(encode_command("guest-set-time", {"time": 5})) == {
        "execute": "guest-set-time", "arguments": {"time": 5}}
    assert json.loads(encode_command("guest-ping")) == {"execute": "guest-ping"}


@pytest.mark.parametrize("reply", [
    None, 42, b'{"return": 1}', "", "not json", "[1, 2]", '"text"', '{"x": 1}',
    '{"return": 1' , "[" * 100000, '{"return": "' + "a" * 300_000 + '"}',
])
def test_malformed_replies_are_protocol_errors(reply: object) -> None:
    with pytest.raises(AgentProtocolError):
        decode_reply(reply, command="guest-get-time", domain="d")


def test_error_reply_is_refusal() -> None:
    with pytest.raises(AgentRefused, match="not currently supported"):
        decode_reply('{"error": {"class": "GenericError", "desc": "this feature or command is not '
                     'currently supported"}}', command="guest-set-time")


@pytest.mark.parametrize("value", [True, False, -1, 0, 2**63, 1.5e18, "1700000000000000000", None, [], {}])
def test_bad_times_rejected(value: object) -> None:
    with pytest.raises(AgentProtocolError):
        parse_time_ns(value)


def test_good_time() -> None:
    assert parse_time_ns(1_700_000_000_123_456_789) == 1_700_000_000_123_456_789


@pytest.mark.parametrize("value", [
    None, [], {"exited": "yes"}, {"exited": True, "exitcode": "0"}, {"exited": True, "out-data": "!!"},
    {"exited": True, "out-data": "A" * 200_000},
])
def test_bad_exec_status(value: object) -> None:
    with pytest.raises(AgentProtocolError):
        parse_exec_status(value)


def test_exec_status() -> None:
    st = parse_exec_status({"exited": True, "exitcode": 0, "out-data": "aGk="})
    assert st.exited and st.exitcode == 0 and st.out == b"hi" and st.err == b""
