"""Decide between KVM and TCG by booting, not by looking at ``/dev/kvm``.

On some hosts ``/dev/kvm`` answers but a nested KVM guest hangs at "Booting from ROM" (see
``../shared/LAB.md``). So the probe boots the lab kernel under KVM with a timeout and remembers
the verdict per (QEMU binary, lab image, host kernel) in ``/var/lib/vmcrash/lab/accel.json``.
``VMCRASH_LAB_ACCEL=kvm|qemu`` overrides the probe.
"""

from __future__ import annotations

import json
import logging
import os
import time
from collections.abc import Callable
from pathlib import Path

from vmcrash.host.connection import Hypervisor
from vmcrash.lab.image import LAB_DIR, LabImage

__all__ = ["best_accel", "PROBE_TIMEOUT_S"]

log = logging.getLogger(__name__)

PROBE_TIMEOUT_S = 25.0
_CACHE = LAB_DIR / "accel.json"


def _key(image: LabImage) -> str:
    qemu = Path("/usr/bin/qemu-system-x86_64")
    st = qemu.stat() if qemu.exists() else None
    return f"{image.content_hash}:{st.st_size if st else 0}:{int(st.st_mtime) if st else 0}:{os.uname().release}"


def best_accel(hv: Hypervisor, image: LabImage, probe: Callable[[Hypervisor, LabImage], bool]) -> str:
    """``"kvm"`` when ``probe`` (a boot under KVM, see :func:`vmcrash.lab.guest.probe_kvm`) succeeds,
    else ``"qemu"`` (TCG). Remembered per (lab image, QEMU binary, host kernel)."""
    forced = os.environ.get("VMCRASH_LAB_ACCEL")
    if forced in ("kvm", "qemu"):
        return forced
    key = _key(image)
    try:
        cache = json.loads(_CACHE.read_text())
        if cache.get("key") == key and cache.get("accel") in ("kvm", "qemu"):
            return str(cache["accel"])
    except (OSError, ValueError):
        pass
    t0 = time.monotonic()
    accel = "kvm" if os.path.exists("/dev/kvm") and probe(hv, image) else "qemu"
    log.warning("acceleration probe: %s (%.1f s)", accel, time.monotonic() - t0)
    _CACHE.parent.mkdir(parents=True, exist_ok=True)
    _CACHE.write_text(json.dumps({"key": key, "accel": accel, "probed_at": time.time()}))
    return accel
