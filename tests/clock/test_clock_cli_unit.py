"""``vmcrash clock`` without a guest: formatting, exit-code rules, JSON shape, argument and libvirt errors."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from vmcrash.cli.clock import DomainOutcome, exit_code_of, format_duration, format_offset, outcome_dict
from vmcrash.clock import OffsetEstimate, SyncResult
from vmcrash.errors import AgentProtocolError, AgentUnavailable, DomainNotFound

EST = OffsetEstimate(offset_ns=-15_002_000_000, rtt_ns=1_040_000, spread_ns=120_000, probes_used=4,
                     taken_at_ns=1_700_000_000_000_000_000)
GOOD = SyncResult(before=EST, after=OffsetEstimate(-312_000, 980_000, 90_000, 4, 1_700_000_000_050_000_000),
                  attempts=1, ok=True, target_ns=5_000_000, lead_ns=520_000, set_rtt_ns=13_000_000)
MISSED = SyncResult(before=EST, after=EST, attempts=5, ok=False, target_ns=5_000_000)


@pytest.mark.parametrize("ns, text", [(-15_002_000_000, "-15.002 s"), (312_000, "+0.312 ms"),
                                      (-4_999_999, "-5.000 ms"), (0, "+0.000 ms"), (1_000_000_000, "+1.000 s")])
def test_format_offset(ns: int, text: str) -> None:
    assert format_offset(ns) == text


def test_format_duration() -> None:
    assert format_duration(520_000) == "0.52 ms"
    assert format_duration(1_204_000_000) == "1.204 s"


def test_exit_codes() -> None:
    assert exit_code_of([DomainOutcome("a", result=EST), DomainOutcome("b", result=GOOD)]) == 0
    assert exit_code_of([DomainOutcome("a", result=GOOD), DomainOutcome("b", result=MISSED)]) == 1
    bad = DomainOutcome("c", error=AgentProtocolError("x", domain="c"))
    gone = DomainOutcome("d", error=AgentUnavailable("x", domain="d"))
    assert exit_code_of([DomainOutcome("a", result=MISSED), bad]) == 2
    assert exit_code_of([bad, gone, DomainOutcome("a", result=GOOD)]) == 3
    assert exit_code_of([DomainOutcome("e", error=DomainNotFound("e"))]) == 2


def test_outcome_dicts() -> None:
    assert outcome_dict(DomainOutcome("a", result=EST)) == {"domain": "a", "ok": True, **EST.to_dict()}
    assert outcome_dict(DomainOutcome("b", result=GOOD)) == {"domain": "b", **GOOD.to_dict()}
    doc = outcome_dict(DomainOutcome("c", error=AgentUnavailable("no agent", domain="c")))
    assert doc == {"domain": "c", "ok": False,
                   "error": {"type": "AgentUnavailable", "message": "c: no agent", "exit_code": 3}}
    json.dumps(doc)


def _vmcrash(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "vmcrash.cli.main", *args], check=False, capture_output=True,
                          text=True, timeout=60)


def test_cli_unreachable_libvirt_is_one_line_exit_3() -> None:
    p = _vmcrash("clock", "check", "-c", "qemu+unix:///system?socket=/nonexistent/vmcrash.sock", "dom")
    assert p.returncode == 3, p.stderr
    assert p.stdout == ""
    lines = p.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and "libvirt" in lines[0]


@pytest.mark.parametrize("args", [("clock", "sync", "--target-ms", "0", "dom"),
                                  ("clock", "sync", "--attempts", "0", "dom"),
                                  ("clock", "check", "--probes", "0", "dom"),
                                  ("clock", "check")])
def test_cli_bad_arguments_exit_2(args: tuple[str, ...]) -> None:
    p = _vmcrash(*args)
    assert p.returncode == 2, (p.stdout, p.stderr)
    assert "Traceback" not in p.stderr


def test_cli_help_lists_both_subcommands() -> None:
    p = _vmcrash("clock", "--help")
    assert p.returncode == 0 and "check" in p.stdout and "sync" in p.stdout
