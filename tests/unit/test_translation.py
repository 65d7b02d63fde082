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


def test_translation_table_is_looked_up_most_specific_first(monkeypatch: pytest.MonkeyPatch) -> None:
    from vmcrash.host import connection

    assert connection.error_class(libvirt.VIR_ERR_NO_DOMAIN, libvirt.VIR_FROM_RPC) is DomainNotFound
    assert connection.error_class(libvirt.VIR_ERR_OPERATION_FAILED, libvirt.VIR_FROM_REMOTE) is LibvirtUnavailable
    assert connection.error_class(libvirt.VIR_ERR_OPERATION_FAILED, libvirt.VIR_FROM_QEMU) is LibvirtRefused
    monkeypatch.setitem(connection.TRANSLATION, (libvirt.VIR_ERR_OPERATION_FAILED, libvirt.VIR_FROM_QEMU),
                        LibvirtUnavailable)
    assert connection.error_class(libvirt.VIR_ERR_OPERATION_FAILED, libvirt.VIR_FROM_QEMU) is LibvirtUnavailable


def test_libvirt_errors_block_translates_and_keeps_the_cause() -> None:
    from vmcrash.host.connection import libvirt_errors

    original = _libvirt_error(libvirt.VIR_ERR_NO_DOMAIN, libvirt.VIR_FROM_QEMU, "no domain with matching name")
    with pytest.raises(DomainNotFound) as info:
        with libvirt_errors(domain="web1"):
            raise original
    assert info.value.__cause__ is original and "web1" in str(info.value)
    with libvirt_errors(domain="web1"):
        pass  # nothing raised, nothing translated


@pytest.mark.parametrize("code, message, not_configured", [
    (libvirt.VIR_ERR_ARGUMENT_UNSUPPORTED, "argument unsupported: QEMU guest agent is not configured", True),
    (libvirt.VIR_ERR_AGENT_UNRESPONSIVE, "Guest agent is not responding: QEMU guest agent is not connected", False),
])
def test_agent_errors_say_whether_the_channel_is_missing(monkeypatch: pytest.MonkeyPatch, code: int,
                                                         message: str, not_configured: bool) -> None:
    import libvirt_qemu

    from vmcrash.errors import AgentUnavailable
    from vmcrash.host.agent import Agent

    def fail(*args: object) -> str:
        raise _libvirt_error(code, libvirt.VIR_FROM_QEMU, message)

    class Dom:
        def name(self) -> str:
            return "web1"

    monkeypatch.setattr(libvirt_qemu, "qemuAgentCommand", fail)
    with pytest.raises(AgentUnavailable) as info:
        Agent(Dom()).raw("guest-ping")  # type: ignore[arg-type]
    assert info.value.not_configured is not_configured
    assert isinstance(info.value.__cause__, libvirt.libvirtError)
