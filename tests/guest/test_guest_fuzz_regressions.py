"""Guest configuration found by the fuzz campaign (``bench/fuzz.py``, target ``timecfg``), minimized.

The inputs are in ``fuzz-regressions/``; each once made ``vmcrash guest`` fail with a traceback.
"""

from __future__ import annotations

import math
from pathlib import Path

from _guestsys import system

from vmcrash.guest.audit import audit
from vmcrash.guest.sources import MemorySource
from vmcrash.guest.timecfg import read_chrony, slew_seconds

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
