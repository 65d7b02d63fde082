"""The throwaway crash lab: a guest built from the host's own kernel, busybox and qemu-guest-agent.

Used by ``vmcrash selftest``, ``vmcrash lab``, the tests and the benchmarks. Guests themselves are
:class:`vmcrash.lab.guest.LabGuest` made from a :class:`vmcrash.lab.guest.GuestSpec`. The
guest-side tests also boot a real Debian root (:mod:`vmcrash.lab.rootfs`) with systemd as init
(:mod:`vmcrash.lab.systemd_guest`).

Public surface: :func:`build_image` -> :class:`LabImage`; :class:`LibvirtDaemons` and
:func:`ensure_libvirtd` (start libvirt's daemons when absent, stop only what was started).
"""

from __future__ import annotations

from vmcrash.lab.daemons import LibvirtDaemons, ensure_libvirtd
from vmcrash.lab.image import LabImage, build_image

__all__ = ["LabImage", "build_image", "LibvirtDaemons", "ensure_libvirtd"]
