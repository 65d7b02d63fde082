"""Shared fixtures: libvirt's daemons for the session, lab guests that never outlive a test.

Lab tests are never skipped: when QEMU or libvirt are missing they fail (CI must be red then).
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator

import pytest

pytest_plugins = ["pytester"]


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    # Lab tests go last so that fast unit failures show first.
    items.sort(key=lambda item: 1 if item.get_closest_marker("lab") else 0)


@pytest.fixture(scope="session")
def libvirt_daemons() -> Iterator[object]:
    """virtlogd + libvirtd running for the session; stopped after only if this fixture started them."""
    from vmcrash.lab.daemons import LibvirtDaemons

    daemons = LibvirtDaemons()
    daemons.start()
    try:
        yield daemons
    finally:
        daemons.stop()


@pytest.fixture(scope="session")
def hv(libvirt_daemons: object) -> Iterator[object]:
    """A session-wide connection to qemu:///system (opened after the event loop is up)."""
    from vmcrash.host import aio
    from vmcrash.host.connection import Hypervisor
    from vmcrash.lab.guest import sweep_stale

    aio.event_loop()
    conn = Hypervisor()
    sweep_stale(conn)
    yield conn
    conn.close()


@pytest.fixture(scope="session")
def lab_image(libvirt_daemons: object) -> object:
    from vmcrash.lab.image import build_image

    return build_image()


@pytest.fixture
def lab_guest(hv: object, lab_image: object) -> Iterator[Callable[..., object]]:
    """Factory: ``lab_guest(memory_mib=..., ...)`` -> a defined (not started) LabGuest.

    Every guest made here is destroyed and undefined when the test ends, pass or fail, and the
    test fails if libvirt still knows any of them afterwards.
    """
    from vmcrash.lab.guest import GuestSpec, LabGuest

    made: list[LabGuest] = []

    def make(**spec: object) -> LabGuest:
        guest = LabGuest(GuestSpec(**spec), hv=hv, image=lab_image, keep_serial=True)  # type: ignore[arg-type]
        made.append(guest)
        guest.define()
        return guest

    yield make
    for guest in made:
        guest.cleanup()
    leftover = {d.name() for d in hv.domains()} & {g.name for g in made}  # type: ignore[attr-defined]
    assert not leftover, f"lab domains left behind: {leftover}"
    for guest in made:
        if os.environ.get("VMCRASH_KEEP_SERIAL") is None:
            guest.serial_path.unlink(missing_ok=True)
