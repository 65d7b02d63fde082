"""The one concurrent boot of the systemd guest modules: what a module stages and what it gets back.

A debootstrapped Debian guest booted with systemd under TCG takes minutes, most of them idle (a
90 s wait bound running out, a collector waiting for an NTP gate). So the guests of every module
that uses the session fixture ``systemd_boots`` (conftest.py: test_guest_boot_proof.py and
test_guest_boot_bound.py) boot together, one vCPU each, in one
:func:`~vmcrash.lab.systemd_guest.boot_all` call: each such module has a ``stage(ctx: BootContext)
-> Staged`` function that prepares its roots and says what the host does while they run, and its
module fixture reads its own :class:`Booted` slice. Only the modules of the tests selected in the
session are staged: one module run alone boots only its own guests.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # conftest.py imports this module: libvirt only when a lab fixture runs
    import pytest

    from vmcrash.host.connection import Hypervisor
    from vmcrash.lab.labntp import HostNtpServer, NtpGate
    from vmcrash.lab.rootfs import Rootfs
    from vmcrash.lab.systemd_guest import LabBootPlan, LabBootResult


@dataclass(frozen=True)
class BootContext:
    """What a module's ``stage`` gets: the session's pieces every guest of the boot shares.

    ``work``: the module's own directory for its staged roots (removed by its module fixture).
    ``ntp``: the lab NTP server (a :class:`~vmcrash.lab.labntp.HostNtpServer` on 127.0.0.1:123).
    ``gate``: an :class:`~vmcrash.lab.labntp.NtpGate` in front of ``ntp``, closed until a console
    function opens it. ``hv``, ``debian_root``, ``tmp_path_factory``: the session fixtures.
    """

    hv: Hypervisor
    debian_root: Rootfs
    work: Path
    ntp: HostNtpServer
    gate: NtpGate
    tmp_path_factory: pytest.TempPathFactory


@dataclass(frozen=True)
class Staged:
    """What a module's ``stage`` returns: its guests (labels unique in the module), how long they may
    run at most (seconds, from the common start), and whatever its fixture needs afterwards."""

    plans: list[LabBootPlan]
    timeout_s: float
    state: Any = None


@dataclass(frozen=True)
class Booted:
    """A module's slice of the concurrent boot: its stage's ``state``, its guests' results by label
    (empty when it staged none) and its ``work`` directory (for its fixture to remove)."""

    state: Any
    results: dict[str, LabBootResult]
    work: Path
