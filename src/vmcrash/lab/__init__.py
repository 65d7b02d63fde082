"""The throwaway crash lab: a guest built from the host's own kernel, busybox and qemu-guest-agent.

Used by ``vmcrash selftest``, ``vmcrash lab``, the tests and the benchmarks. Public surface:
:func:`build_image`, :class:`GuestSpec`, :class:`LabGuest`, :func:`ensure_libvirtd`,
:func:`probe_accel`.
"""

from __future__ import annotations

from vmcrash.lab.daemons import LibvirtDaemons, ensure_libvirtd
from vmcrash.lab.image import LabImage, build_image

__all__ = ["LabImage", "build_image", "LibvirtDaemons", "ensure_libvirtd"]
