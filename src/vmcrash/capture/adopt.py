"""Crashes that libvirt owns (its own ``<on_crash>`` action): adopt its dump, record the panic, fix the clock.

:class:`Adopter` sits in front of :class:`~vmcrash.capture.pipeline.CrashHandler`: per panic it
reads the domain's live XML and asks :func:`vmcrash.host.crash_owner.decide` who owns the crash.

* ``preserve`` → the handler's own pipeline, unchanged;
* ``coredump-restart`` / ``coredump-destroy`` → *adoption*: wait (bounded, by polling libvirt's job
  info and the domain state) until libvirt's dump job ends, find the file libvirt wrote for this
  panic, wait until it is complete (ELF program headers say how long it must be), make it 0600,
  leave it or move it into the dump dir, then catalogue it with the same fields as vmcrash's own
  dumps (sidecar, sha256, triage), queue compaction and apply retention;
* ``restart`` / ``destroy`` → record the panic from the event (no dump: libvirt kept none).

After a libvirt restart (a reset of the same QEMU process) the guest agent comes back with the
rebooted guest and the clock is corrected as after vmcrash's own recovery. Freeze figures (panic →
running again) are recorded for every owner.

A libvirtd restart in the middle of libvirt's dump loses libvirt's pending action (QEMU finishes
the file, the domain stays ``crashed (panicked)`` with no job): the adoption resumes after the
reconnect, waits for the file to be complete, and then performs the lost action itself (reset in
place or destroy) — once. vmcrash never dumps a libvirt-owned crash and never restarts it a second
time.

Steps of one adoption (``catalog`` states): ``detected`` → ``dumping`` (libvirt's job) → ``dumped``
(file found and complete) → ``recovered`` (libvirt's action seen, or performed) → ``done``/``failed``;
the row's ``capture.owner`` marks it as an adoption so that reconciliation resumes it here.
"""

from __future__ import annotations

import enum
import logging
import os
import threading
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

import libvirt

from vmcrash.capture import files, sidecar
from vmcrash.capture.clockstep import clock_after_freeze, record_after_crash
from vmcrash.capture.compaction import queue_compaction
from vmcrash.capture.pipeline import CrashHandler, PanicReport, triage_dump
from vmcrash.capture.recovery import recover
from vmcrash.capture.staging import move_sparse
from vmcrash.config import Config
from vmcrash.errors import DomainNotFound, LibvirtUnavailable, StorageError, VmcrashError
from vmcrash.host.connection import DomainInfo, Hypervisor, call, domain_id
from vmcrash.host.crash_owner import (
    CrashOwnership,
    OnCrash,
    Owner,
    decide,
    elf_expected_size,
    parse_qemu_conf_dump_path,
    pick_auto_dump,
)
from vmcrash.store.catalog import FINAL_STATES, Catalog, CrashRow
from vmcrash.store.states import CrashState, parse_state

__all__ = ["Adopter", "JobOutcome", "LibvirtState", "is_adoption", "libvirt_dump_dir", "job_wait_s"]

log = logging.getLogger(__name__)

S = CrashState

#: libvirt job types that mean "a job is running" (``virDomainJobType``)
_ACTIVE_JOBS = (libvirt.VIR_DOMAIN_JOB_BOUNDED, libvirt.VIR_DOMAIN_JOB_UNBOUNDED, libvirt.VIR_DOMAIN_JOB_COMPLETED)
#: no job and still crashed this long after the job (or, without one, after we looked): libvirt lost its action
ABANDON_GRACE_S = 5.0
#: a file that has not grown for this long and is still short is incomplete
STALL_S = 20.0
POLL_S = 0.05
#: ELF header + program headers are read from the start of the file (QEMU writes them first)
HEAD_BYTES = 1 << 20


class LibvirtState(enum.Enum):
    """What libvirt did with the crashed domain, as seen from outside."""

    RUNNING = "running"          # reset (restart actions)
    SHUTOFF = "shutoff"          # stopped (destroy actions)
    GONE = "gone"                # a transient domain that libvirt destroyed
    ABANDONED = "abandoned"      # still crashed, no job: libvirt lost its pending action
    TIMEOUT = "timeout"          # libvirt's job still running at the deadline


@dataclass(frozen=True)
class JobOutcome:
    """The end of libvirt's handling. Times are host wall clock (ns)."""

    state: LibvirtState
    saw_job: bool
    job_ended_ns: int | None
    running_again_ns: int | None
    waited_s: float


def is_adoption(row: CrashRow | None) -> bool:
    """True for a catalogue row whose crash libvirt owns (resumed by :class:`Adopter`, not the pipeline)."""
    return row is not None and (row.capture or {}).get("owner") in (Owner.LIBVIRT_DUMP.value, Owner.LIBVIRT.value)


def libvirt_dump_dir(cfg: Config) -> Path:
    """libvirt's ``auto_dump_path``: the configured one, else qemu.conf's, else libvirt's default."""
    if cfg.libvirt_dumps.dump_path:
        return Path(cfg.libvirt_dumps.dump_path)
    try:
        text = Path(cfg.libvirt_dumps.qemu_conf).read_text(errors="replace")[:1_000_000]
    except OSError:
        text = ""
    return Path(parse_qemu_conf_dump_path(text))


def job_wait_s(cfg: Config, memory_bytes: int) -> float:
    """How long to wait for libvirt's dump job: configured, else 60 s + 30 s per GiB of RAM."""
    if cfg.libvirt_dumps.job_wait_s > 0:
        return cfg.libvirt_dumps.job_wait_s
    return 60.0 + 30.0 * memory_bytes / (1 << 30)


def _local_utc_offset_s() -> int:
    off = datetime.now().astimezone().utcoffset()
    return int(off.total_seconds()) if off is not None else 0


def wait_libvirt(dom: libvirt.virDomain, on_crash: OnCrash, *, timeout_s: float,
                 stop: threading.Event | None = None) -> JobOutcome:
    """Wait until libvirt has finished its crash handling of ``dom`` (bounded by ``timeout_s``).

    Polls the domain's job info and state every 50 ms (no fixed sleep): the dump job runs while
    the domain is crashed; then a restart action shows ``running``, a destroy ``shut off``.

    :raises LibvirtUnavailable: the connection went away (the caller resumes after reconnecting).
    """
    t0 = time.monotonic()
    saw_job = False
    job_ended_ns: int | None = None
    quiet_since = time.monotonic()
    name = dom.name()
    while True:
        try:
            state, _reason = call(dom.state, domain=name)
        except DomainNotFound:
            return JobOutcome(LibvirtState.GONE, saw_job, job_ended_ns, None, time.monotonic() - t0)
        now_ns = time.time_ns()
        if state == libvirt.VIR_DOMAIN_SHUTOFF:
            return JobOutcome(LibvirtState.SHUTOFF, saw_job, job_ended_ns or (now_ns if saw_job else None),
                              None, time.monotonic() - t0)
        try:
            job = call(dom.jobInfo, domain=name)[0]
        except LibvirtUnavailable:
            raise
        except VmcrashError:  # "domain is not running": it stopped between the two calls
            continue
        if job in _ACTIVE_JOBS:
            saw_job = True
            quiet_since = time.monotonic()
        else:
            if saw_job and job_ended_ns is None:
                job_ended_ns = now_ns
            if state == libvirt.VIR_DOMAIN_RUNNING:
                return JobOutcome(LibvirtState.RUNNING, saw_job, job_ended_ns, now_ns, time.monotonic() - t0)
            if time.monotonic() - quiet_since > ABANDON_GRACE_S:
                return JobOutcome(LibvirtState.ABANDONED, saw_job, job_ended_ns, None, time.monotonic() - t0)
        if time.monotonic() - t0 > timeout_s or (stop is not None and stop.is_set()):
            return JobOutcome(LibvirtState.TIMEOUT, saw_job, None, None, time.monotonic() - t0)
        time.sleep(POLL_S)


def wait_complete(path: Path, *, stall_s: float = STALL_S, stop: threading.Event | None = None) -> tuple[str, int]:
    """Wait until the dump at ``path`` is complete; return (format, size in bytes).

    An ELF is complete when it is as long as its program headers say; other formats (kdump,
    written by a libvirt that has an option for it) when libvirt's job has ended, which the caller
    waited for. :raises StorageError: the file stopped growing short of its end, or is unreadable.
    """
    from vmcrash.vmcore._open import detect_format

    last_size, last_change = -1, time.monotonic()
    while True:
        with files.storage_errors("cannot read libvirt's dump", path):
            size = path.stat().st_size
            with open(path, "rb") as f:
                head = f.read(HEAD_BYTES)
        try:
            fmt = detect_format(head[:64])
        except VmcrashError:
            fmt = ""
        if fmt and fmt != "elf":
            return fmt, size
        expected = elf_expected_size(head) if fmt == "elf" else None
        if expected is not None and size >= expected:
            return "elf", size
        if size != last_size:
            last_size, last_change = size, time.monotonic()
        elif time.monotonic() - last_change > stall_s or (stop is not None and stop.is_set()):
            want = f"{expected} bytes" if expected is not None else "an ELF header"
            raise StorageError(f"libvirt's dump is incomplete: {size} bytes, needs {want}", path=str(path))
        time.sleep(0.1)


class Adopter:
    """Routes each panic to its owner; adopts libvirt's dumps. Thread-safe; one per daemon.

    :param handler: vmcrash's own pipeline (for ``preserve`` domains, compaction, retention).
    """

    def __init__(self, cfg: Config, hv_provider: Callable[[], Hypervisor], catalog: Catalog,
                 handler: CrashHandler, *, stop: threading.Event | None = None) -> None:
        self.cfg = cfg
        self.hv_provider = hv_provider
        self.catalog = catalog
        self.handler = handler
        self.stop = stop or handler.stop

    # -- routing ---------------------------------------------------------------------------

    def ownership(self, dom: libvirt.virDomain, name: str) -> CrashOwnership:
        """The crash owner of ``dom`` from its live XML (inactive XML when it is not running)."""
        xml = call(dom.XMLDesc, 0, domain=name)
        return decide(xml, takeover=self.cfg.policy_for(name).crash_owner == "vmcrash")

    def handle(self, report: PanicReport) -> int:
        """Handle one panic by its owner; return the catalogue id. :raises LibvirtUnavailable:"""
        if report.resume_crash_id is not None:
            row = self.catalog.get(report.resume_crash_id)
            if is_adoption(row):
                assert row is not None
                return self._adopt_logged(report, row, None)
            return self.handler.handle(report)
        if report.source == "manual":
            return self.handler.handle(report)
        hv = self.hv_provider()
        try:
            dom = hv.lookup(report.uuid)
            own = self.ownership(dom, report.domain)
        except DomainNotFound:
            # a transient domain libvirt destroyed on the panic (its on_crash was not preserve)
            own = CrashOwnership(OnCrash.DESTROY, Owner.LIBVIRT)
            return self._record_gone(report, own)
        if own.owner is Owner.VMCRASH:
            return self.handler.handle(report)
        return self._adopt_logged(report, None, own)

    def _record_gone(self, report: PanicReport, own: CrashOwnership) -> int:
        crash_id = self.catalog.new_crash(domain=report.domain, uuid=report.uuid, domain_id=None,
                                          source=report.source, panic_ns=report.panic_ns,
                                          policy=asdict(self.cfg.policy_for(report.domain)))
        self.catalog.advance(crash_id, S.SKIPPED, capture={"owner": own.owner.value, "on_crash": None},
                             recovery_action="libvirt", recovery_result="gone",
                             skip_reason="libvirt owns this crash: the domain was gone when vmcrash looked "
                                         "(destroyed by libvirt); nothing to dump")
        self.catalog.log(crash_id, "skipped", "domain gone: libvirt destroyed it")
        return crash_id

    # -- adoption --------------------------------------------------------------------------

    def _adopt_logged(self, report: PanicReport, row: CrashRow | None, own: CrashOwnership | None) -> int:
        return self._adopt(report, row, own)

    def _adopt(self, report: PanicReport, row: CrashRow | None, own: CrashOwnership | None) -> int:
        hv = self.hv_provider()
        dlog = log.getChild(files.safe_component(report.domain))
        try:
            dom = hv.lookup(report.uuid)
            info: DomainInfo | None = hv.info(dom)
        except DomainNotFound:
            dom, info = None, None
        if row is None:
            assert own is not None and dom is not None and info is not None
            crash_id = self.catalog.new_crash(domain=info.name, uuid=info.uuid, domain_id=domain_id(dom),
                                              source=report.source, panic_ns=report.panic_ns,
                                              policy=asdict(self.cfg.policy_for(info.name)))
            cap: dict[str, Any] = {"owner": own.owner.value, "on_crash": own.on_crash.value}
            self.catalog.advance(crash_id, S.CAPTURING if own.adopts else S.RECOVERING, capture=cap,
                                 dump_started_ns=report.panic_ns if own.adopts else None)
            self.catalog.log(crash_id, "owner", own.plan())
            dlog.warning("panic detected (%s); crash #%d is libvirt's (on_crash=%s)", report.source, crash_id,
                         own.on_crash.value)
            row = self.catalog.get(crash_id)
            assert row is not None
        else:
            crash_id = row.id
            cap = dict(row.capture or {})
            own = CrashOwnership(OnCrash(cap.get("on_crash") or "destroy"), Owner(cap["owner"]))
            self.catalog.update(crash_id, attempts=row.attempts + 1)
            self.catalog.log(crash_id, "resumed", "adoption resumed after an interruption")
            dlog.warning("crash #%d: resuming the adoption of libvirt's handling", crash_id)
        try:
            return self._adopt_steps(hv, dom, info, report, row, own, cap, dlog)
        except LibvirtUnavailable:
            self.catalog.log(crash_id, "interrupted", "libvirt connection lost; will resume")
            raise
        except Exception as exc:  # recorded; libvirt keeps owning the guest
            internal = not isinstance(exc, VmcrashError)
            msg = f"internal error: {type(exc).__name__}: {exc}" if internal else str(exc)
            dlog.error("adoption failed: %s", msg, exc_info=internal)
            current = self.catalog.get(crash_id)
            if current is not None and current.state not in FINAL_STATES:
                self.catalog.advance(crash_id, S.FAILED, error=msg)
            self.catalog.log(crash_id, "failed", msg)
            return crash_id

    def _adopt_steps(self, hv: Hypervisor, dom: libvirt.virDomain | None, info: DomainInfo | None,
                     report: PanicReport, row: CrashRow, own: CrashOwnership, cap: dict[str, Any],
                     dlog: logging.Logger) -> int:
        crash_id = row.id
        memory = info.memory_bytes if info else 0
        outcome = (JobOutcome(LibvirtState.GONE, False, None, None, 0.0) if dom is None else
                   wait_libvirt(dom, own.on_crash, timeout_s=job_wait_s(self.cfg, memory), stop=self.stop))
        cap["libvirt"] = {"state": outcome.state.value, "saw_job": outcome.saw_job,
                          "job_ended_ns": outcome.job_ended_ns, "waited_s": round(outcome.waited_s, 3)}
        self.catalog.update(crash_id, capture=cap)
        self.catalog.log(crash_id, "libvirt", f"libvirt's handling: {outcome.state.value}"
                         + (f" (its dump job ended after {outcome.waited_s:.2f} s)" if outcome.saw_job else ""))
        if outcome.state is LibvirtState.TIMEOUT:
            msg = f"libvirt's dump job still running after {outcome.waited_s:.0f} s; left to libvirt"
            self.catalog.advance(crash_id, S.FAILED, error=msg)
            self.catalog.log(crash_id, "failed", msg)
            dlog.error("%s", msg)
            return crash_id
        dump_error: str | None = None
        if own.adopts and not row.dump_path:
            try:
                self._adopt_file(row, report, own, cap, outcome, dlog)
            except VmcrashError as exc:
                if isinstance(exc, LibvirtUnavailable):
                    raise
                dump_error = f"libvirt's dump not adopted: {exc}"
                self.catalog.log(crash_id, "adopt-failed", dump_error)
                dlog.error("%s", dump_error)
        elif not own.adopts:
            reason = (f"libvirt owns this crash (on_crash={own.on_crash.value}): it keeps no dump; "
                      f"panic recorded from the event")
            self.catalog.update(crash_id, skip_reason=reason)
            self.catalog.log(crash_id, "dump-skipped", reason)
        running_again_ns = outcome.running_again_ns
        action, result_state = f"libvirt {own.on_crash.value}", outcome.state.value
        if row.running_again_ns and row.recovery_action and outcome.state is LibvirtState.RUNNING:
            # resumed after the guest ran again (e.g. the clock step was interrupted): keep what was seen
            running_again_ns, action = row.running_again_ns, row.recovery_action
        if outcome.state is LibvirtState.ABANDONED and dom is not None:
            # libvirtd restarted mid-handling and forgot its action: do it, once.
            lost = "reset" if own.on_crash.restarts else "destroy"
            self.catalog.log(crash_id, "libvirt-lost", f"libvirt left the guest crashed with no job (its "
                                                       f"{own.on_crash.value} action was lost); vmcrash does "
                                                       f"the {lost}")
            dlog.warning("libvirt lost its %s action; doing the %s", own.on_crash.value, lost)
            result, dom = recover(hv, dom, lost)
            action, result_state, running_again_ns = f"{lost} (for libvirt)", result.state, result.running_again_ns
        freeze_s = (running_again_ns - report.panic_ns) / 1e9 if running_again_ns else None
        current = self.catalog.get(crash_id)
        now = parse_state(current.state) if current is not None else S.EVENT
        if now not in (S.RECOVERING, S.RECOVERED, S.CLOCK):  # libvirt recovered the guest itself
            self.catalog.advance(crash_id, S.RECOVERING)
        if now not in (S.RECOVERED, S.CLOCK):
            self.catalog.advance(crash_id, S.RECOVERED, recovery_action=action, recovery_result=result_state,
                                 running_again_ns=running_again_ns, freeze_s=freeze_s,
                                 domain_id=domain_id(dom) if dom is not None else None)
        self.catalog.log(crash_id, "recovered", f"{action}: {result_state}"
                         + (f", frozen {freeze_s:.2f} s" if freeze_s is not None else ""))
        self._sidecar_after_recovery(crash_id, freeze_s, action, result_state)
        if result_state == "running" and dom is not None and not self.stop.is_set():
            if now is not S.CLOCK:
                self.catalog.advance(crash_id, S.CLOCK)
            self._clock(crash_id, dom, row)
        if dump_error:
            self.catalog.advance(crash_id, S.FAILED, error=dump_error)
            self.catalog.log(crash_id, "failed", dump_error)
        else:
            self.catalog.advance(crash_id, S.DONE, error=None)
            self.catalog.log(crash_id, "done", "handled (libvirt's crash)")
        self.handler.apply_retention()
        return crash_id

    def _sidecar_after_recovery(self, crash_id: int, freeze_s: float | None, action: str, state: str) -> None:
        row = self.catalog.get(crash_id)
        if row is not None and row.sidecar_path:
            sidecar.amend(row.sidecar_path, freeze_seconds=round(freeze_s, 3) if freeze_s is not None else None,
                          recovery={"action": action, "state": state})

    def _taken(self, uuid: str) -> set[bytes]:
        """Names of libvirt dump files already catalogued for this domain (never adopted twice)."""
        out = set()
        for r in self.catalog.crashes(domain=uuid, limit=10000):
            src = (r.capture or {}).get("adopted_from")
            if src:
                out.add(os.fsencode(Path(src).name))
        return out

    def _find_file(self, row: CrashRow, report: PanicReport, dlog: logging.Logger) -> Path:
        directory = libvirt_dump_dir(self.cfg)
        deadline = time.monotonic() + 10.0
        while True:
            try:
                names = [n for n in os.listdir(os.fsencode(directory))][:100_000]
            except OSError as exc:
                raise StorageError(f"cannot list libvirt's dump directory: {exc.strerror}",
                                   path=str(directory)) from exc
            panic_s = None if report.source == "reconcile" else row.panic_ns / 1e9
            found = pick_auto_dump(names, row.domain, panic_s=panic_s, now_s=time.time(),
                                   utc_offset_s=_local_utc_offset_s(), dom_id=row.domain_id,
                                   taken=self._taken(row.uuid))
            if found is not None:
                return directory / os.fsdecode(found.name)
            if time.monotonic() > deadline:
                raise StorageError(f"no dump of {row.domain!r} (id {row.domain_id}) from this panic in "
                                   f"libvirt's dump directory", path=str(directory))
            time.sleep(0.2)

    def _adopt_file(self, row: CrashRow, report: PanicReport, own: CrashOwnership, cap: dict[str, Any],
                    outcome: JobOutcome, dlog: logging.Logger) -> None:
        crash_id = row.id
        src = self._find_file(row, report, dlog)
        fmt, size = wait_complete(src, stop=self.stop)
        dump_fmt = "elf" if fmt == "elf" else "kdump-flattened" if fmt == "kdump-flattened" else "kdump"
        with files.storage_errors("cannot restrict libvirt's dump", src):
            os.chmod(src, 0o600)
        ended_ns = outcome.job_ended_ns or int(src.stat().st_mtime * 1e9)
        names = files.dump_name(self.cfg.dump_dir, row.domain, row.uuid, row.panic_ns,
                                "elf" if dump_fmt == "elf" else "kdump-zlib")
        cap.update(adopted_from=str(src), format_detected=fmt)
        move = self.cfg.libvirt_dumps.place == "move"
        if move:
            self.catalog.update(crash_id, dump_temp_path=str(names.partial), capture=cap)
            self._move_in(src, names.partial)
            here, path = names.partial, names.final
        else:
            here = path = src
            cap["compact_dst"] = str(names.final.with_suffix(".kdump"))
        has_vmcoreinfo, triage, triage_error = triage_dump(here)
        doc = sidecar.describe(
            here, crash_id=crash_id, domain=row.domain, uuid=row.uuid, format=dump_fmt, file=path.name,
            panic_time=files.iso_utc(row.panic_ns), panic_source=row.source, dump_start=files.iso_utc(row.panic_ns),
            dump_end=files.iso_utc(ended_ns), dump_seconds=round((ended_ns - row.panic_ns) / 1e9, 3),
            vmcoreinfo=has_vmcoreinfo,
            capture={"mode": "libvirt", "owner": own.owner.value, "on_crash": own.on_crash.value,
                     "adopted_from": str(src)},
            recovery={"action": f"libvirt {own.on_crash.value}", "state": outcome.state.value},
            triage_error=triage_error, extra={"path": str(path)})
        if move:
            sidecar.publish(names.partial, names.final, names.sidecar, doc)
            self.catalog.log(crash_id, "adopted", f"moved libvirt's dump {src.name} to {path}")
        else:
            files.write_sidecar(names.sidecar, doc.to_dict())
            self.catalog.log(crash_id, "adopted", f"libvirt's dump {src} left in place")
        self.catalog.advance(crash_id, CrashState.CAPTURED, dump_path=str(path), dump_temp_path=None,
                             dump_format=dump_fmt, dump_size_bytes=size, dump_sha256=doc.sha256, dump_ended_ns=ended_ns,
                             vmcoreinfo=has_vmcoreinfo, sidecar_path=str(names.sidecar), triage=triage, capture=cap)
        if triage_error:
            self.catalog.log(crash_id, "triage", f"triage: {triage_error}")
        elif triage:
            self.catalog.log(crash_id, "triage", str(triage.get("panic_line") or "no panic line found"))
        if dump_fmt != "kdump" and (dump_fmt != "elf" or self.cfg.staging.compact):
            queue_compaction(self.catalog, crash_id, "queued (runs in the background, at low priority)")
        dlog.info("adopted libvirt's dump %s (%d MiB, sha256 %s…)", path, size >> 20, doc.sha256[:12])

    @staticmethod
    def _move_in(src: Path, partial: Path) -> None:
        """Move libvirt's file into the dump dir as a temp file (rename, or a sparse copy across filesystems)."""
        try:
            os.rename(src, partial)
        except OSError:
            move_sparse(src, partial)

    def _clock(self, crash_id: int, dom: libvirt.virDomain, row: CrashRow) -> None:
        clk = self.cfg.clock
        outcome = clock_after_freeze(dom, target_ms=clk.target_ms, agent_wait_s=clk.agent_wait_s,
                                     sync=clk.sync_after_recovery)
        if not outcome.ok and not self.hv_provider().alive():
            # the connection went away under the agent: resume (and correct the clock) after reconnecting
            raise LibvirtUnavailable(f"lost during the clock correction: {outcome.error}", uri=self.cfg.libvirt_uri)
        record_after_crash(self.catalog, crash_id, domain=row.domain, uuid=row.uuid, outcome=outcome)

    # -- take-over -------------------------------------------------------------------------

    def takeover(self, uuid: str) -> str | None:
        """Policy ``crash_owner = "vmcrash"``: switch a running domain's live ``on_crash`` to preserve.

        Never while libvirt handles a crash of it (crashed, or a job running): that crash stays
        libvirt's and is adopted. Returns what was done, or None. Lasts until the domain's next
        start (the daemon applies it again then); ``vmcrash doctor --fix`` makes it permanent.
        """
        hv = self.hv_provider()
        dom = hv.lookup(uuid)
        name = call(dom.name)
        if not self.cfg.watches(name) or self.cfg.policy_for(name).crash_owner != "vmcrash":
            return None
        if not call(dom.isActive, domain=name):
            return None
        own = self.ownership(dom, name)
        if own.owner is Owner.VMCRASH:
            return None
        state, _ = call(dom.state, domain=name)
        if state != libvirt.VIR_DOMAIN_RUNNING or call(dom.jobInfo, domain=name)[0] in _ACTIVE_JOBS:
            log.warning("%s: not taking over now: libvirt is busy with it (a crash in progress stays libvirt's)",
                        name)
            return None
        call(dom.setLifecycleAction, libvirt.VIR_DOMAIN_LIFECYCLE_CRASH,
             libvirt.VIR_DOMAIN_LIFECYCLE_ACTION_PRESERVE, libvirt.VIR_DOMAIN_AFFECT_LIVE, domain=name)
        msg = (f"took over crash handling: live on_crash {own.on_crash.value} -> preserve until the domain's "
               f"next start; `vmcrash doctor --fix {name}` is the way to make it permanent")
        log.warning("%s: %s", name, msg)
        return msg
