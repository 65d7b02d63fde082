"""Foreign exceptions are translated in one place per dependency, keeping the cause."""

from __future__ import annotations

import errno

import libvirt
import pytest

from vmcrash.capture.files import storage_errors
from vmcrash.errors import (
    EXIT_ENVIRONMENT,
    EXIT_USAGE,
    DomainNotFound,
    LibvirtRefused,
    LibvirtUnavailable,
    StorageError,
)
from vmcrash.host.connection import call, translate


def _libvirt_error(code: int, domain: int, message: str) -> libvirt.libvirtError:
    exc = libvirt.libvirtError(message)
    exc.err = (code, domain, message, 2, None, None, None, -1, -1)
    return exc


@pytest.mark.parametrize("code, domain, kind, exit_code", [
    (libvirt.VIR_ERR_NO_DOMAIN, libvirt.VIR_FROM_QEMU, DomainNotFound, EXIT_USAGE),
    (libvirt.VIR_ERR_SYSTEM_ERROR, libvirt.VIR_FROM_RPC, LibvirtUnavailable, EXIT_ENVIRONMENT),
    (libvirt.VIR_ERR_INTERNAL_ERROR, libvirt.VIR_FROM_RPC, LibvirtUnavailable, EXIT_ENVIRONMENT),
    (libvirt.VIR_ERR_NO_CONNECT, libvirt.VIR_FROM_NONE, LibvirtUnavailable, EXIT_ENVIRONMENT),
    (libvirt.VIR_ERR_OPERATION_INVALID, libvirt.VIR_FROM_QEMU, LibvirtRefused, EXIT_ENVIRONMENT),
    (libvirt.VIR_ERR_INTERNAL_ERROR, libvirt.VIR_FROM_QEMU, LibvirtRefused, EXIT_ENVIRONMENT),
])
def test_libvirt_errors_map_by_fault(code: int, domain: int, kind: type, exit_code: int) -> None:
    err = translate(_libvirt_error(code, domain, "boom"), domain="vm1")
    assert isinstance(err, kind) and err.exit_code == exit_code


def test_call_keeps_the_cause() -> None:
    original = _libvirt_error(libvirt.VIR_ERR_OPERATION_INVALID, libvirt.VIR_FROM_QEMU, "domain is not running")

    def fail() -> None:
        raise original

    with pytest.raises(LibvirtRefused) as info:
        call(fail, domain="vm1")
    assert info.value.__cause__ is original
    assert "vm1" in str(info.value) and "not running" in str(info.value)


def test_os_errors_become_storage_errors() -> None:
    with pytest.raises(StorageError, match="no space left on device") as info:
        with storage_errors("cannot write dump", "/d/x"):
            raise OSError(errno.ENOSPC, "No space left on device")
    assert isinstance(info.value.__cause__, OSError) and info.value.path == "/d/x"
