"""Guest input found by the fuzz campaign (``bench/fuzz.py``, targets ``timecfg`` and ``conditions``), minimized.

The inputs are in ``fuzz-regressions/``; each once made ``vmcrash guest`` fail with a traceback.
"""

from __future__ import annotations

import math
import os
import time
from pathlib import Path

import pytest
from _guestsys import system

from vmcrash.errors import UnitFileError
from vmcrash.guest.audit import audit
from vmcrash.guest.conditions import (
    OFFLINE,
    Machine,
    UnitConditions,
    evaluate_conditions,
    probe_machine,
    unit_conditions,
)
from vmcrash.guest.sources import MemorySource, RootSource
from vmcrash.guest.timecfg import read_chrony, slew_seconds
from vmcrash.guest.units import UnitLoader

INPUTS = Path(__file__).parent / "fuzz-regressions"


def test_maxslewrate_that_underflows_to_zero() -> None:
    """``maxslewrate 1e-320`` (found as timecfg #4004, minimized from 5679 bytes): the rate in
    ppm times 1e-6 underflows to 0.0 and slew_seconds divided by zero (ZeroDivisionError). A rate
    that is not positive now never slews: infinite time."""
    conf = (INPUTS / "chrony-maxslewrate-underflow.conf").read_bytes()
    cfg = read_chrony(MemorySource({"/etc/chrony/chrony.conf": conf}), "/etc/chrony/chrony.conf")
    assert cfg.maxslewrate_ppm == 1e-320
    assert cfg.slew_seconds() == math.inf
    assert slew_seconds(360, 0.0) == slew_seconds(360, -5.0) == slew_seconds(360, math.nan) == math.inf
    assert slew_seconds(360, 500.0) == 720_000.0


def test_the_same_chrony_conf_through_the_audit() -> None:
    """The whole audit of a guest with that chrony.conf reports the slew instead of crashing."""
    conf = (INPUTS / "chrony-maxslewrate-underflow.conf").read_text()
    report = audit(source=MemorySource(system({"/etc/chrony/chrony.conf": conf})))
    chrony = [d for d in report.daemons if d.daemon == "chrony"]
    assert chrony and chrony[0].data["slew_seconds_for_reference_offset"] == math.inf
    assert "at least inf h" in " ".join(chrony[0].summary)


# -- conditions (target ``conditions``) ------------------------------------------------------------


def _conditions(unit_text: str, machine: Machine = OFFLINE) -> UnitConditions:
    src = MemorySource({"/etc/systemd/system/a.service": unit_text})
    return unit_conditions(UnitLoader(src).load("a.service"), src, machine)


LIVE = Machine(live=True, capability_bounding=(1 << 41) - 1, mounts=frozenset({"/"}), read_only=frozenset())


def test_capability_spelled_with_a_superscript_digit() -> None:
    """``ConditionCapability=²`` (conditions #95, minimized from 3101 bytes): ``"²".isdigit()`` is
    true but ``int("²")`` raises ValueError. systemd reads a capability number with safe_atoi
    (ASCII digits only), so ``²`` is an unknown capability: an error, so false, also when negated."""
    text = (INPUTS / "capability-superscript-two.service").read_text()
    for machine in (OFFLINE, LIVE):
        assert _conditions(text, machine).conditions.met is False
        assert _conditions(text.replace("=", "=!"), machine).conditions.met is False
    assert _conditions("[Unit]\nConditionCapability=" + "9" * 5000, LIVE).conditions.met is False  # 4301+ digits
    assert _conditions("[Unit]\nConditionCapability=\u0663", LIVE).conditions.met is False  # Arabic-Indic 3
    assert _conditions("[Unit]\nConditionCapability=25", LIVE).conditions.met is True  # CAP_SYS_TIME by number


def test_power_supply_online_with_a_superscript_digit(tmp_path: Path) -> None:
    """A power supply whose ``online`` reads ``²`` (conditions #13, minimized from 2125 bytes):
    probe_machine, which must never raise, raised ValueError. Only ASCII digits count as a number
    now; ``²`` is not online, and without a discharging battery systemd assumes AC."""
    online = tmp_path / "sys/class/power_supply/1/online"
    online.parent.mkdir(parents=True)
    online.write_bytes((INPUTS / "power-supply-online-superscript-two").read_bytes())
    assert probe_machine(tmp_path, lambda *a: None).ac_power is True
    (online.parent / "type").write_text("Mains\n")
    online.write_text("1\n")
    (tmp_path / "sys/class/power_supply/BAT0").mkdir()
    (tmp_path / "sys/class/power_supply/BAT0/type").write_text("Battery\n")
    (tmp_path / "sys/class/power_supply/BAT0/status").write_text("Discharging\n")
    assert probe_machine(tmp_path, lambda *a: None).ac_power is True  # mains online wins
    online.write_bytes((INPUTS / "power-supply-online-superscript-two").read_bytes())
    assert probe_machine(tmp_path, lambda *a: None).ac_power is False  # not online, battery discharging


def test_needs_update_stamp_that_is_not_a_plain_number(tmp_path: Path) -> None:
    """The same ``isdigit``/``int`` mistake in ConditionNeedsUpdate's ``TIMESTAMP_NSEC=`` (found by
    reading the code next to the two above): systemd's safe_atou64 refuses ``²``, 5000 digits and
    values of 2^64 and more, and then the condition is true (the update tools run)."""
    (tmp_path / "etc/systemd/system").mkdir(parents=True)
    (tmp_path / "etc/systemd/system/a.service").write_text("[Unit]\nConditionNeedsUpdate=/etc\n")
    (tmp_path / "usr").mkdir()
    src = RootSource(tmp_path)
    unit = UnitLoader(src).load("a.service")
    live = Machine(live=True, kernel_cmdline="ro", mounts=frozenset({"/"}), read_only=frozenset())
    # same second, /usr with nanoseconds, the stamp file without: the stamp's text decides
    os.utime(tmp_path / "usr", ns=(0, 1_700_000_000_000_000_500))
    for stamp, runs in (("\u00b2", True), ("9" * 5000, True), (str(1 << 64), True), ("1700000000000000400", True),
                        ("1700000000000000600", False)):
        (tmp_path / "etc/.updated").write_text(f"TIMESTAMP_NSEC={stamp}\n")
        os.utime(tmp_path / "etc/.updated", ns=(0, 1_700_000_000_000_000_000))
        assert evaluate_conditions(unit, src, live).met is runs, stamp[:20]


def test_glob_of_a_hostname_with_a_nul_on_the_running_system(tmp_path: Path) -> None:
    """``ConditionPathExistsGlob=/%H`` with a kernel hostname of ``\\0/`` (conditions #7960,
    minimized from 3525 bytes): the expanded path held a NUL, and RootSource's ``os.lstat`` raised
    ValueError ("embedded null byte") through the audit. No file has a NUL in its path: nothing
    is there, the glob matches nothing, and every RootSource call answers as for a missing path."""
    (tmp_path / "etc/systemd/system/fuzz.service.d").mkdir(parents=True)
    (tmp_path / "etc/systemd/system/fuzz.service").write_text("[Unit]\n")
    (tmp_path / "etc/systemd/system/fuzz.service.d/x.conf").write_bytes(
        (INPUTS / "glob-of-the-hostname.conf").read_bytes())
    (tmp_path / "proc/sys/kernel").mkdir(parents=True)
    (tmp_path / "proc/sys/kernel/hostname").write_bytes((INPUTS / "hostname-nul-slash").read_bytes())
    src = RootSource(tmp_path)
    machine = probe_machine(tmp_path, lambda *a: None)
    assert machine.hostname == "\0/"
    cond = unit_conditions(UnitLoader(src).load("fuzz.service"), src, machine)
    assert cond.conditions.met is False and cond.describe() == "skipped at boot: ConditionPathExistsGlob=/%H false"
    assert src.stat("/etc/\0") is None and src.kind("/\0/") is None and src.listdir("/etc\0") == []
    for call in (src.readlink, lambda p: src.read_bytes(p, 10)):
        with pytest.raises(UnitFileError, match="NUL in the path"):
            call("/etc/\0x")


def test_many_kernel_command_line_conditions_over_a_long_command_line() -> None:
    """A unit with ConditionKernelCommandLine= twelve times and a 64 KiB command line (the slowest
    conditions input, #5476: 1.5 s): the line was split with shlex again for every condition, so
    the time grew with conditions x line length. It is split once per line now; 300 conditions
    over 64 KiB took ~36 s before."""
    line = "quiet " + "a" * (64 << 10) + ' x="b c"'
    machine = Machine(live=True, kernel_cmdline=line)
    text = "[Unit]\n" + "ConditionKernelCommandLine=quiet\n" * 300 + 'ConditionKernelCommandLine=x=b c\n'
    start = time.process_time()
    assert _conditions(text, machine).conditions.met is True
    assert time.process_time() - start < 8
    assert _conditions("[Unit]\nConditionKernelCommandLine=|nope\nConditionKernelCommandLine=|x", machine
                       ).conditions.met is True
