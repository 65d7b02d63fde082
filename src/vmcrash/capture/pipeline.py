"""The crash pipeline: one panic taken along the crash state machine, one stage at a time.

:class:`CrashHandler.handle` runs one panic to the end in the calling (worker) thread. Each stage
does one thing and moves the row with :meth:`~vmcrash.store.catalog.Catalog.advance` (the one
transition table is :mod:`vmcrash.store.states`)::

    event ─ capture ─> capturing ─> captured ─ recover ─> recovering ─> recovered
          ─ clock (in a thread) ─> clock ─ finalize + triage ─> triaged ─> done | failed | skipped

Its guarantees, each tested in the lab:

* the guest is recovered per policy even when the dump is skipped (crash loop, policy, no room)
  or fails midway (disk full, libvirt error, abort on shutdown);
* a dump is visible under its final name only once it is complete, fsynced and its sidecar is
  written (:func:`vmcrash.capture.sidecar.publish`); until then it is a ``.partial`` file that
  reconciliation finalizes or removes;
* every step is committed to the catalogue as it happens, so a killed daemon's successor knows
  where the handling stopped (``state``) and finishes it.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

import libvirt

from vmcrash import vmcore
from vmcrash.capture import files, prune, retention, sidecar
from vmcrash.capture.clockstep import clock_after_freeze, record_after_crash
from vmcrash.capture.compaction import Compactor, queue_compaction
from vmcrash.capture.dumping import DumpProgress, DumpStats, take_dump
from vmcrash.capture.hold_stage import HoldStage
from vmcrash.capture.recovery import RecoveryResult, recover, resolve_recovery
from vmcrash.capture.staging import decide_staging, dirty_allowance_bytes, mem_available_bytes, move_sparse
from vmcrash.config import Config, DomainPolicy
from vmcrash.errors import LibvirtUnavailable, VmcrashError
from vmcrash.host.connection import Hypervisor, domain_id
from vmcrash.store.catalog import FINAL_STATES, Catalog
from vmcrash.store.states import CrashState

__all__ = ["PanicReport", "CrashHandler", "triage_dump"]

S = CrashState
#: a held image whose guest cannot start is released after its triage, waited for this long at most
TRIAGE_BEFORE_RELEASE_S = 5.0

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class PanicReport:
    """A panic to handle. ``source``: ``event``, ``reconcile`` or ``manual``.

    ``panic_ns`` is the host wall clock when the panic was seen (the event's arrival; for a panic
    found at start-up, the moment it was found — the real one is unknown then).
    """

    domain: str
    uuid: str
    panic_ns: int
    source: str
    resume_crash_id: int | None = None


def triage_dump(path: Path) -> tuple[bool | None, dict[str, Any] | None, str | None]:
    """(VMCOREINFO present, triage summary, error) for a finished dump; never raises."""
    try:
        has = bool(vmcore.has_vmcoreinfo(path))
    except VmcrashError as exc:
        return None, None, str(exc)
    try:
        return has, vmcore.analyze(path).to_dict(), None
    except VmcrashError as exc:
        return has, None, str(exc)


class CrashHandler:
    """Handles panics end to end. Thread-safe; one instance per daemon.

    :param hv_provider: returns the current connection (the daemon replaces it on reconnect).
    :param stop: set when the daemon stops; running dumps are then aborted or finished per
        ``shutdown_dump``, and the guest is recovered anyway.
    """

    def __init__(self, cfg: Config, hv_provider: Callable[[], Hypervisor], catalog: Catalog, *,
                 stop: threading.Event | None = None,
                 progress: Callable[[str, DumpProgress], None] | None = None) -> None:
        self.cfg = cfg
        self.hv_provider = hv_provider
        self.catalog = catalog
        self.stop = stop or threading.Event()
        self.abort_dumps = threading.Event()
        self.progress = progress
        self.dump_slots = threading.BoundedSemaphore(cfg.max_parallel_dumps)
        self.active_dumps = 0
        self.max_active_dumps = 0
        self._count_lock = threading.Lock()
        files.ensure_dump_dir(cfg.dump_dir)
        self.hold = HoldStage(cfg, catalog, self.stop)
        self.compactor = Compactor(cfg, catalog)

    # -- the whole handling ----------------------------------------------------------------

    def handle(self, report: PanicReport) -> int:
        """Handle one panic; return its catalogue id.

        :raises LibvirtUnavailable: the connection went away; the row stays unfinished and is
            picked up again after reconnecting.
        """
        hv = self.hv_provider()
        dom = hv.lookup(report.uuid)
        info = hv.info(dom)
        dlog = log.getChild(files.safe_component(info.name))
        policy = self.cfg.policy_for(info.name)
        crash_id = self._open_row(report, info, dom, policy)
        dlog.warning("panic detected (%s); crash #%d", report.source, crash_id)
        recovered: RecoveryResult | None = None
        held = None  # a HeldImage while capture mode hold keeps the crashed RAM
        try:
            if not info.panicked and report.source != "manual":
                self.catalog.advance(crash_id, S.SKIPPED,
                                     skip_reason=f"domain is {info.state} now; nothing left to handle")
                return crash_id
            action, skip_reason = self._decide(crash_id, info.uuid, policy, report, panicked=info.panicked)
            stats: DumpStats | None = None
            staged: Path | None = None
            names: files.DumpName | None = None
            dump_error: str | None = None
            if skip_reason is None:
                names, staged, skip_reason = self._prepare_target(crash_id, info, policy)
            triage_job = None
            if skip_reason is not None:
                action = self._resolve_recovery(crash_id, action, holds_image=False)
                self.catalog.update(crash_id, skip_reason=skip_reason)
                self.catalog.log(crash_id, "dump-skipped", skip_reason)
                dlog.info("dump skipped: %s", skip_reason)
            else:
                assert names is not None
                choice = self.hold.choose(crash_id, dom, info, policy, action)
                if choice.mode.value in ("hold", "copy") and policy.format != "elf":
                    # the image is written as QEMU's ELF; the kdump format comes from compaction
                    self.catalog.log(crash_id, "capture-mode", f"{choice.mode.value} writes ELF; "
                                     f"{policy.format} comes from the compaction after it")
                    policy = replace(policy, format="elf")
                    names = files.dump_name(self.cfg.dump_dir, info.name, info.uuid, time.time_ns(), "elf")
                self.catalog.advance(crash_id, S.CAPTURING, capture={"planned": _planned(names, staged),
                                                                     "choice": choice.to_dict()})
                if choice.mode.value in ("hold", "copy"):
                    held, choice = self.hold.hold(crash_id, dom, info, choice, self.cfg.dump_dir, dlog)
                    if held is not None:
                        staged = None
                        triage_job = self.hold.start_triage(held)
                action = self._resolve_recovery(crash_id, action, holds_image=held is not None
                                                and choice.mode.value == "hold")
                if held is None:
                    stats, dump_error = self._dump(crash_id, dom, info, policy, names, staged, dlog,
                                                   mode=choice.mode.value, choice=choice.to_dict())
            recovered, dom = self._recover_holding(crash_id, hv, dom, action, report, dlog, held, triage_job)
            lost = False  # a held image that could not be written: the capture is lost, and said so
            if held is not None and not self.hold.registry.holds(crash_id):
                held, lost = None, True  # released so the guest could start; its dump is given up
                dump_error = "held image released so the guest could start again; no dump"
            if held is not None and names is not None and triage_job is not None:
                self.hold.record_triage(crash_id, *triage_job)
                stats, dump_error = self.hold.write_behind(crash_id, held, choice, names, dlog,
                                                           progress=self._progress_for(info.name, dlog))
                held, lost = None, stats is None
            clock_thread = self._start_clock(crash_id, dom, info, recovered)
            if stats is not None and names is not None:
                self._finalize(crash_id, info, report, policy, names, staged, stats, recovered, dlog)
            self._join_clock(crash_id, clock_thread)
            if dump_error:
                final = S.LOST if lost else S.FAILED
                self.catalog.advance(crash_id, final, error=dump_error)
                self.catalog.log(crash_id, final.value, dump_error)
            else:
                self.catalog.advance(crash_id, S.DONE, error=None)
                self.catalog.log(crash_id, "done", "handled")
            self._apply_retention()
            return crash_id
        except LibvirtUnavailable:
            self.catalog.log(crash_id, "interrupted", "libvirt connection lost; will resume")
            raise
        except Exception as exc:  # recorded, logged with traceback, and the guest still recovered
            internal = not isinstance(exc, VmcrashError)
            msg = f"internal error: {type(exc).__name__}: {exc}" if internal else str(exc)
            dlog.error("handling failed: %s", msg, exc_info=internal)
            if held is not None:
                self.hold.release(crash_id, f"held image released after a failure: {msg}")
                held = None
            if recovered is None:
                self._recover_anyway(crash_id, hv, dom, policy, report, dlog)
            row = self.catalog.get(crash_id)
            if row is not None and row.state not in FINAL_STATES:
                self.catalog.advance(crash_id, S.FAILED, error=msg)
            self.catalog.log(crash_id, "failed", msg)
            return crash_id
        finally:
            if held is not None:
                self.hold.release(crash_id, "held image released")

    # -- stages ----------------------------------------------------------------------------

    def _open_row(self, report: PanicReport, info: Any, dom: libvirt.virDomain, policy: DomainPolicy) -> int:
        """State ``event``: a new row, or an interrupted one taken up again (attempts + 1)."""
        if report.resume_crash_id is None:
            return self.catalog.new_crash(domain=info.name, uuid=info.uuid, domain_id=domain_id(dom),
                                          source=report.source, panic_ns=report.panic_ns, policy=asdict(policy))
        crash_id = report.resume_crash_id
        row = self.catalog.get(crash_id)
        self.catalog.advance(crash_id, S.EVENT, attempts=(row.attempts + 1) if row else 2, dump_temp_path=None)
        self.catalog.log(crash_id, "resumed", "handling resumed after an interruption")
        return crash_id

    def _decide(self, crash_id: int, uuid: str, policy: DomainPolicy,
                report: PanicReport, *, panicked: bool) -> tuple[str, str | None]:
        """(recovery action, reason to skip the dump or None).

        A manual dump of a running guest resumes it; of a panicked guest (nobody handled that
        panic) it recovers the guest per policy, as the daemon would have.
        """
        loop = self.cfg.crash_loop
        since = report.panic_ns - int(loop.window_minutes * 60e9)
        recent = self.catalog.panic_times(uuid, since)
        if report.source != "manual" and len(recent) >= loop.max_panics:
            reason = (f"crash loop: {len(recent)} panics within {loop.window_minutes:g} min "
                      f"(limit {loop.max_panics}); not dumping, fallback action {loop.fallback}")
            self.catalog.log(crash_id, "crash-loop", reason)
            log.error("%s", reason)
            return loop.fallback, reason
        if report.source == "manual":
            return (policy.recovery if panicked else "resume"), None
        if not policy.dump:
            return policy.recovery, "dumps disabled by policy"
        return policy.recovery, None

    def _prepare_target(self, crash_id: int, info: Any, policy: DomainPolicy
                        ) -> tuple[files.DumpName | None, Path | None, str | None]:
        """Check room (pruning old dumps if allowed), choose staging, name the files."""
        cfg = self.cfg
        need = retention.estimate_dump_bytes(info.memory_bytes, policy.format)
        try:
            free = retention.disk_free_bytes(cfg.dump_dir)
        except VmcrashError as exc:
            return None, None, f"cannot check free space: {exc}"
        plan = retention.plan_space(prune.kept_dumps(self.catalog), need_bytes=need, free_bytes=free,
                                    reserve_bytes=cfg.min_free_bytes,
                                    keep_min_per_domain=cfg.retention.keep_min_per_domain)
        if not plan.fits:
            return None, None, plan.reason
        for old in plan.delete:
            self._delete_dump(old.crash_id, f"deleted to make room for crash #{crash_id}")
        names = files.dump_name(cfg.dump_dir, info.name, info.uuid, time.time_ns(), policy.format)
        staged: Path | None = None
        if cfg.staging.mode == "stream":
            try:
                tmpfs_free = retention.disk_free_bytes(Path(cfg.staging.tmpfs_dir))
            except VmcrashError:
                tmpfs_free = 0
            decision = decide_staging(mode=cfg.staging.tmpfs, tmpfs_dir=Path(cfg.staging.tmpfs_dir),
                                      expected_bytes=need,
                                      headroom_bytes=cfg.staging.ram_headroom_mib * 1024 * 1024,
                                      mem_available=mem_available_bytes(), tmpfs_free=tmpfs_free,
                                      dirty_allowance=dirty_allowance_bytes())
            self.catalog.log(crash_id, "staging", decision.reason)
            if decision.directory is not None:
                files.ensure_dump_dir(decision.directory)
                staged = decision.directory / f"{crash_id}-{names.partial.name}"
        return names, staged, None

    def _dump(self, crash_id: int, dom: libvirt.virDomain, info: Any, policy: DomainPolicy,
              names: files.DumpName, staged: Path | None, dlog: logging.Logger, *,
              mode: str | None = None, choice: dict[str, Any] | None = None,
              ) -> tuple[DumpStats | None, str | None]:
        """State ``capturing`` → ``captured``: stream (or let libvirt write) the dump into its temp file."""
        target = staged or names.partial
        planned = _planned(names, staged)
        mode = mode or self.cfg.staging.mode
        progress = self._progress_for(info.name, dlog)
        self.dump_slots.acquire()
        self.catalog.update(crash_id, dump_temp_path=str(target), dump_format=policy.format,
                            dump_started_ns=time.time_ns())
        with self._count_lock:
            self.active_dumps += 1
            self.max_active_dumps = max(self.max_active_dumps, self.active_dumps)
        try:
            stats = take_dump(dom, target, policy.format, mode=mode,
                              expected_bytes=retention.estimate_dump_bytes(info.memory_bytes, policy.format),
                              progress=progress, abort=self.abort_dumps, threads=self.cfg.staging.stream_threads)
        except VmcrashError as exc:
            files.remove_quietly(target)
            if isinstance(exc, LibvirtUnavailable):
                raise
            msg = f"dump failed: {exc}"
            self.catalog.update(crash_id, dump_temp_path=None)
            self.catalog.log(crash_id, "dump-failed", msg)
            dlog.error("%s", msg)
            return None, msg
        finally:
            with self._count_lock:
                self.active_dumps -= 1
            self.dump_slots.release()
        if staged is not None:
            stats.staged_in = str(staged.parent)
        if choice is not None:
            stats.extra["choice"] = choice
        self.catalog.advance(crash_id, S.CAPTURED, dump_ended_ns=stats.ended_ns,
                             capture={**stats.to_dict(), "planned": planned})
        self.catalog.log(crash_id, "dumped", f"{stats.stream_bytes} bytes in {stats.seconds:.2f} s "
                                             f"({stats.mode}, {stats.written_bytes} written)")
        dlog.info("dump written: %d MiB in %.2f s", stats.stream_bytes >> 20, stats.seconds)
        return stats, None

    def _resolve_recovery(self, crash_id: int, action: str, *, holds_image: bool) -> str:
        """The concrete recovery for the policy's ``action`` (``auto``: restart when an image is held,
        else reset), logged when it was ``auto``."""
        concrete = resolve_recovery(action, holds_image=holds_image)
        if action == "auto":
            why = ("the held image needs a fresh QEMU" if holds_image else
                   "nothing is held: the same QEMU is reset in place")
            self.catalog.log(crash_id, "recovery", f"auto: {concrete} ({why})")
        return concrete

    def _progress_for(self, name: str, dlog: logging.Logger) -> Callable[[DumpProgress], None]:
        """A progress sink for one dump: the caller's (``vmcrash dump``'s bar), and a log line every 2 s."""
        last_log = [0.0]

        def progress(p: DumpProgress) -> None:
            if self.progress:
                self.progress(name, p)
            if p.elapsed_s - last_log[0] >= 2.0:
                last_log[0] = p.elapsed_s
                dlog.info("dump %.0f%% (%d/%d MiB, %.1f s)", 100 * p.fraction, p.processed_bytes >> 20,
                          p.total_bytes >> 20, p.elapsed_s)

        return progress

    def _recover(self, crash_id: int, hv: Hypervisor, dom: libvirt.virDomain, action: str,
                 report: PanicReport, dlog: logging.Logger) -> tuple[RecoveryResult, libvirt.virDomain]:
        """State ``recovering`` → ``recovered``: the policy's action."""
        row = self.catalog.get(crash_id)
        if row is None or row.state != S.RECOVERING.value:
            # the action is recorded before it starts: a daemon killed between a restart's destroy and
            # its start leaves a shut-off guest that reconciliation must start (capture/reconcile.py)
            self.catalog.advance(crash_id, S.RECOVERING, recovery_action=action)
        result, dom = recover(hv, dom, action)
        freeze_s = (result.running_again_ns - report.panic_ns) / 1e9 if result.running_again_ns else None
        self.catalog.advance(crash_id, S.RECOVERED, recovery_action=action, recovery_result=result.state,
                             running_again_ns=result.running_again_ns, freeze_s=freeze_s,
                             domain_id=domain_id(dom))
        self.catalog.log(crash_id, "recovered", f"{action}: {result.detail} (state {result.state})"
                         + (f", frozen {freeze_s:.2f} s" if freeze_s is not None else ""))
        dlog.info("recovered: %s -> %s%s", action, result.state,
                  f" after {freeze_s:.2f} s frozen" if freeze_s is not None else "")
        return result, dom

    def _recover_holding(self, crash_id: int, hv: Hypervisor, dom: libvirt.virDomain, action: str,
                         report: PanicReport, dlog: logging.Logger, held: Any, triage_job: Any = None
                         ) -> tuple[RecoveryResult, libvirt.virDomain]:
        """Recover; a held image never keeps the guest from starting: if the start fails while an
        image is held (e.g. its hugepages are the ones the fresh QEMU needs), the triage of the image
        is recorded (waiting at most :data:`TRIAGE_BEFORE_RELEASE_S`), the image is released and
        the recovery tried once more."""
        if held is None:
            return self._recover(crash_id, hv, dom, action, report, dlog)
        try:
            result, dom = self._recover(crash_id, hv, dom, action, report, dlog)
            if result.running or action != "restart":
                return result, dom
            why = f"guest not running after restart ({result.state})"
        except LibvirtUnavailable:
            raise
        except VmcrashError as exc:
            why = f"restart failed: {exc}"
        if triage_job is not None:
            thread, out = triage_job
            self.hold.record_triage(crash_id, thread, out, wait_s=TRIAGE_BEFORE_RELEASE_S)
        self.hold.release(crash_id, f"{why}; held image released so the guest can start, retrying")
        dlog.error("%s; released the held image and retrying", why)
        row = self.catalog.get(crash_id)
        if row is not None and row.state == S.RECOVERED.value:
            self.catalog.log(crash_id, "recovering", "recovery tried again")
            result, dom = recover(hv, dom, action)
            freeze_s = (result.running_again_ns - report.panic_ns) / 1e9 if result.running_again_ns else None
            self.catalog.update(crash_id, recovery_result=result.state, running_again_ns=result.running_again_ns,
                                freeze_s=freeze_s, domain_id=domain_id(dom))
            self.catalog.log(crash_id, "recovered", f"{action} (again): {result.detail} (state {result.state})")
            return result, dom
        return self._recover(crash_id, hv, dom, action, report, dlog)

    def _recover_anyway(self, crash_id: int, hv: Hypervisor, dom: libvirt.virDomain, policy: DomainPolicy,
                        report: PanicReport, dlog: logging.Logger) -> None:
        try:
            self._recover(crash_id, hv, dom, resolve_recovery(policy.recovery, holds_image=False), report, dlog)
        except VmcrashError as exc:
            self.catalog.log(crash_id, "recovery-failed", str(exc))
            dlog.error("recovery failed too: %s", exc)

    def _start_clock(self, crash_id: int, dom: libvirt.virDomain, info: Any,
                     recovered: RecoveryResult) -> threading.Thread | None:
        """State ``clock``: the guest runs again; its clock is corrected in a thread (it overlaps
        the dump's finalization)."""
        clk = self.cfg.clock
        if not recovered.running:
            return None
        if self.stop.is_set():
            self.catalog.log(crash_id, "clock", "clock correction skipped: daemon stopping")
            return None
        self.catalog.advance(crash_id, S.CLOCK)

        def run() -> None:
            outcome = clock_after_freeze(dom, target_ms=clk.target_ms, agent_wait_s=clk.agent_wait_s,
                                         sync=clk.sync_after_recovery)
            record_after_crash(self.catalog, crash_id, domain=info.name, uuid=info.uuid, outcome=outcome)

        t = threading.Thread(target=run, name=f"clock:{info.name}", daemon=True)
        t.start()
        return t

    def _join_clock(self, crash_id: int, clock_thread: threading.Thread | None) -> None:
        if clock_thread is None:
            return
        while clock_thread.is_alive():
            clock_thread.join(0.2)
            if self.stop.is_set() and clock_thread.is_alive():
                self.catalog.log(crash_id, "clock", "clock correction left running at shutdown")
                return

    def _finalize(self, crash_id: int, info: Any, report: PanicReport, policy: DomainPolicy,
                  names: files.DumpName, staged: Path | None, stats: DumpStats,
                  recovered: RecoveryResult, dlog: logging.Logger) -> None:
        """State ``triaged``: the complete dump published under its final name with its sidecar, triaged."""
        try:
            if staged is not None:
                move_sparse(staged, names.partial)
                self.catalog.update(crash_id, dump_temp_path=str(names.partial))
            has_vmcoreinfo, triage, triage_error = triage_dump(names.partial)
            freeze_s = ((recovered.running_again_ns - report.panic_ns) / 1e9
                        if recovered.running_again_ns else None)
            doc = sidecar.describe(
                names.partial, crash_id=crash_id, domain=info.name, uuid=info.uuid, format=policy.format,
                file=names.final.name, panic_time=files.iso_utc(report.panic_ns), panic_source=report.source,
                dump_start=files.iso_utc(stats.started_ns), dump_end=files.iso_utc(stats.ended_ns),
                dump_seconds=round(stats.seconds, 3),
                freeze_seconds=round(freeze_s, 3) if freeze_s is not None else None,
                vmcoreinfo=has_vmcoreinfo, capture=stats.to_dict(),
                recovery={"action": recovered.action, "state": recovered.state}, triage_error=triage_error)
            sidecar.publish(names.partial, names.final, names.sidecar, doc)
        except VmcrashError:
            files.remove_quietly(names.partial)
            files.remove_quietly(staged)
            self.catalog.update(crash_id, dump_temp_path=None)
            raise
        row = self.catalog.get(crash_id)
        fields: dict[str, Any] = {"dump_path": str(names.final), "dump_temp_path": None,
                                  "dump_size_bytes": doc.size_bytes, "dump_sha256": doc.sha256,
                                  "vmcoreinfo": has_vmcoreinfo, "sidecar_path": str(names.sidecar)}
        if triage is not None or not (row and row.triage):  # keep the held image's triage if this one failed
            fields["triage"] = triage
        self.catalog.advance(crash_id, S.TRIAGED, **fields)
        if triage_error:
            self.catalog.log(crash_id, "triage", f"triage: {triage_error}")
        elif triage:
            self.catalog.log(crash_id, "triage", str(triage.get("panic_line") or "no panic line found"))
        # the configured format (a held or copied image is written as ELF even when kdump was asked for)
        if self.cfg.policy_for(info.name).format.startswith("kdump") or self.cfg.staging.compact:
            queue_compaction(self.catalog, crash_id, "queued (runs after the guest is back, at low priority)")
        dlog.info("dump finalized: %s (%d MiB, sha256 %s…)", names.final, doc.size_bytes >> 20, doc.sha256[:12])

    # -- compaction and retention ----------------------------------------------------------

    def compact(self, crash_id: int) -> Any:
        """Compact a finished dump (see :class:`~vmcrash.capture.compaction.Compactor`)."""
        return self.compactor.compact(crash_id)

    def apply_retention(self) -> None:
        """Delete dumps beyond the retention limits (also used for adopted dumps)."""
        self._apply_retention()

    def _delete_dump(self, crash_id: int, why: str) -> None:
        prune.delete_dump(self.catalog, crash_id, why)

    def _apply_retention(self) -> None:
        prune.apply_retention(self.catalog, self.cfg.retention, time.time_ns())


def _planned(names: files.DumpName, staged: Path | None) -> dict[str, str]:
    """Where a dump goes, kept in the row so that reconciliation can finish it."""
    return {"final": str(names.final), "partial": str(names.partial), "sidecar": str(names.sidecar),
            "target": str(staged or names.partial)}
