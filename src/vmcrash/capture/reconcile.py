"""Reconciliation: nothing lost across a killed daemon, a lost connection or a restart.

At start-up and after every reconnect the daemon (:mod:`vmcrash.capture.watch`) asks this room
what to do with each crash row whose handling did not end. The answer comes from one table,
:data:`vmcrash.store.states.RESUME`, by the row's state and whether its guest is still panicked:
run the handling again on the same row, make a complete capture final, or close the row saying
why (``lost`` for a held image that died with the daemon). Leftover temp files that nobody is
writing are removed here too.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import libvirt

from vmcrash.capture import files, sidecar
from vmcrash.capture.adopt import is_adoption
from vmcrash.capture.compaction import queue_compaction
from vmcrash.capture.hold import lost_image_note
from vmcrash.capture.pipeline import PanicReport, triage_dump
from vmcrash.capture.recovery import recover
from vmcrash.capture.staging import STAGING_SUBDIR, move_sparse
from vmcrash.config import Config
from vmcrash.errors import LibvirtUnavailable, VmcrashError
from vmcrash.host.connection import DomainInfo, Hypervisor, domain_id
from vmcrash.store.catalog import Catalog, CrashRow
from vmcrash.store.states import RESUME, CrashState, parse_state

__all__ = ["Reconciler", "all_infos"]

log = logging.getLogger(__name__)

S = CrashState


def all_infos(hv: Hypervisor) -> list[DomainInfo]:
    """Every domain's info; domains that vanish meanwhile are skipped. :raises LibvirtUnavailable:"""
    out = []
    for dom in hv.domains():
        try:
            out.append(hv.info(dom))
        except LibvirtUnavailable:
            raise
        except VmcrashError:
            continue
    return out


class Reconciler:
    """Resumes or closes interrupted crash rows (blocking; the daemon runs it in a worker thread).

    :param hv_provider: the daemon's current connection.
    :param watched: whether the daemon watches a domain (by name).
    """

    def __init__(self, cfg: Config, catalog: Catalog, hv_provider: Callable[[], Hypervisor],
                 watched: Callable[[str], bool]) -> None:
        self.cfg = cfg
        self.catalog = catalog
        self.hv_provider = hv_provider
        self.watched = watched

    def resume(self, row: CrashRow, info: DomainInfo | None) -> PanicReport | None:
        """Decide and do what an interrupted row needs; a report when its handling must run again."""
        watched = info is not None and self.watched(info.name)
        if is_adoption(row) and info is not None and watched:  # libvirt's crash: the adopter resumes any state
            self.catalog.log(row.id, "reconcile", "interrupted adoption found; resuming it")
            return PanicReport(info.name, info.uuid, row.panic_ns, row.source, row.id)
        state = parse_state(row.state)
        panicked = bool(info is not None and info.panicked and watched)
        action = RESUME[(state, panicked)]
        if action == "rehandle":
            assert info is not None
            self.wait_no_job(row.uuid)
            self.cleanup_temp(row)
            self.catalog.log(row.id, "reconcile", f"interrupted handling found in state {state.value}; "
                                                  "guest still panicked: handling it again")
            return PanicReport(info.name, info.uuid, row.panic_ns, row.source, row.id)
        state_now = info.state if info else "gone"
        if action == "finish":
            self.catalog.advance(row.id, S.DONE)
            self.catalog.log(row.id, "reconcile", f"only bookkeeping was left; closed (guest {state_now})")
        elif action == "recover":
            state_now = self.finish_recovery(row, info) or state_now
            self.finalize(self.catalog.get(row.id) or row, state_now)
        elif action == "finalize":
            self.finalize(row, state_now)
        else:
            self.close(row, f"handling interrupted in state {state.value}; guest found {state_now}")
        return None

    def finish_recovery(self, row: CrashRow, info: DomainInfo | None) -> str | None:
        """A ``restart`` interrupted after its destroy: start the shut-off guest (the policy's own
        action, recorded when the recovery began). Returns the guest's state after it, or None when
        there was nothing to do."""
        if info is None or row.recovery_action != "restart" or info.state not in ("shutoff", "shutdown"):
            return None
        hv = self.hv_provider()
        try:
            dom = hv.lookup(info.uuid)
            deadline = time.monotonic() + 30.0
            while info.state == "shutdown" and time.monotonic() < deadline:  # the destroy is still ending
                time.sleep(0.1)
                info = hv.info(dom)
            if info.state != "shutoff":
                return None
            result, dom = recover(hv, dom, "restart")
        except LibvirtUnavailable:
            raise
        except VmcrashError as exc:
            self.catalog.log(row.id, "reconcile", f"interrupted restart: the guest could not be started: {exc}")
            return None
        freeze_s = (result.running_again_ns - row.panic_ns) / 1e9 if result.running_again_ns else None
        self.catalog.advance(row.id, S.RECOVERED, recovery_result=result.state,
                             running_again_ns=result.running_again_ns, freeze_s=freeze_s, domain_id=domain_id(dom))
        self.catalog.log(row.id, "recovered", f"interrupted restart finished: the shut-off guest was started "
                                              f"({result.detail}, state {result.state})")
        log.warning("%s: restart interrupted by the daemon's death; guest started (%s)", info.name, result.state)
        return result.state

    def finalize(self, row: CrashRow, state_now: str) -> None:
        """The guest runs again (or is gone): keep a complete capture, close the row."""
        lost = lost_image_note(row)  # capture mode hold/copy: the image died with the daemon
        if lost is not None:
            self.cleanup_temp(row)
            self.catalog.advance(row.id, S.LOST, dump_temp_path=None, error=lost)
            self.catalog.log(row.id, "reconcile", f"{lost}; guest {state_now}")
            return
        planned = (row.capture or {}).get("planned") or {}
        temp = Path(row.dump_temp_path) if row.dump_temp_path else None
        final = Path(planned["final"]) if planned.get("final") else None
        side = Path(planned["sidecar"]) if planned.get("sidecar") else None
        try:
            if final is not None and side is not None and temp is not None and temp.exists() \
                    and parse_state(row.state) is not S.CAPTURING:
                partial = Path(planned["partial"])
                if temp != partial:
                    move_sparse(temp, partial)
                has_vmcoreinfo, triage, triage_error = triage_dump(partial)
                capture = {k: v for k, v in (row.capture or {}).items() if k != "planned"}
                doc = sidecar.describe(
                    partial, crash_id=row.id, domain=row.domain, uuid=row.uuid, format=row.dump_format,
                    file=final.name, panic_time=files.iso_utc(row.panic_ns), panic_source=row.source,
                    dump_start=files.iso_utc(row.dump_started_ns) if row.dump_started_ns else None,
                    dump_end=files.iso_utc(row.dump_ended_ns) if row.dump_ended_ns else None,
                    dump_seconds=capture.get("seconds"),
                    freeze_seconds=round(row.freeze_s, 3) if row.freeze_s is not None else None,
                    vmcoreinfo=has_vmcoreinfo, capture=capture, triage_error=triage_error,
                    recovery={"action": row.recovery_action, "state": row.recovery_result}
                    if row.recovery_action else None,
                    extra={"note": "finalized after the daemon was interrupted"})
                sidecar.publish(partial, final, side, doc)
                extra: dict[str, Any] = {"vmcoreinfo": has_vmcoreinfo}
                if triage is not None or not row.triage:
                    extra["triage"] = triage
                self._done(row, final, side, doc.size_bytes, doc.sha256,
                           f"complete dump finalized after interruption; guest {state_now}", **extra)
                return
            if final is not None and side is not None and final.exists() and side.exists() and not row.dump_path:
                # killed between the publication and its record: the published dump is complete
                doc_now = sidecar.read(side) or {}
                self._done(row, final, side, final.stat().st_size, str(doc_now.get("sha256") or ""),
                           f"dump published before the interruption recorded; guest {state_now}")
                return
        except VmcrashError as exc:
            self.catalog.log(row.id, "reconcile", f"could not finalize interrupted dump: {exc}")
        if row.skip_reason and parse_state(row.state) in (S.RECOVERED, S.CLOCK):
            self.catalog.advance(row.id, S.DONE, dump_temp_path=None)
            self.catalog.log(row.id, "reconcile", f"no dump was to be taken; closed (guest {state_now})")
            return
        if row.dump_path and Path(row.dump_path).exists():
            self.catalog.advance(row.id, S.DONE, dump_temp_path=None)
            self.catalog.log(row.id, "reconcile", f"dump was final already; closed (guest {state_now})")
            return
        self.close(row, f"handling interrupted in state {parse_state(row.state).value}; guest found {state_now}")

    def _done(self, row: CrashRow, final: Path, side: Path, size: int, sha: str, note: str, **fields: Any) -> None:
        """Close the row on its published dump, and queue that dump's compaction as the pipeline would."""
        self.catalog.advance(row.id, S.DONE, dump_path=str(final), dump_temp_path=None, dump_size_bytes=size,
                             dump_sha256=sha or None, sidecar_path=str(side), error=None, **fields)
        self.catalog.log(row.id, "reconcile", note)
        if (row.dump_format or "").startswith("kdump") or self.cfg.staging.compact:
            queue_compaction(self.catalog, row.id, "queued after the interrupted handling was finalized")

    def close(self, row: CrashRow, why: str) -> None:
        """Nothing can be resumed: the row ends ``failed``, saying why."""
        self.cleanup_temp(row)
        self.catalog.advance(row.id, S.FAILED, dump_temp_path=None, error=why)
        self.catalog.log(row.id, "reconcile", f"closed interrupted handling: {why}")

    def cleanup_temp(self, row: CrashRow) -> None:
        """Remove an interrupted row's temp file (and the FIFO of a hold header grab), and a sidecar
        written for a publication the daemon did not live to do (its dump never got its final name)."""
        if row.dump_temp_path:
            p = Path(row.dump_temp_path)
            if files.remove_quietly(p):
                self.catalog.log(row.id, "cleanup", f"removed unfinished temp file {p.name}")
            files.remove_quietly(p.with_name(p.name + ".fifo"))
        planned = (row.capture or {}).get("planned") or {}
        if planned.get("sidecar") and planned.get("final") and not row.dump_path \
                and not Path(planned["final"]).exists() and files.remove_quietly(Path(planned["sidecar"])):
            self.catalog.log(row.id, "cleanup", f"removed the sidecar of a dump never published: "
                                                f"{Path(planned['sidecar']).name}")

    def wait_no_job(self, uuid: str, timeout_s: float = 600.0) -> None:
        """A killed daemon may leave libvirt still writing a direct dump: wait for that job to end."""
        hv = self.hv_provider()
        dom = hv.lookup(uuid)
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            try:
                if dom.jobInfo()[0] == libvirt.VIR_DOMAIN_JOB_NONE:
                    return
            except libvirt.libvirtError:
                return
            time.sleep(0.2)

    def remove_orphan_partials(self, keep: set[str]) -> None:
        """Remove temp files in the dump dir and the staging dir that no running handling writes."""
        dirs = [self.cfg.dump_dir, Path(self.cfg.staging.tmpfs_dir) / STAGING_SUBDIR]
        for d in dirs:
            for p in files.leftover_partials(d):
                if str(p) in keep:
                    continue
                files.remove_quietly(p)
                log.info("removed leftover partial dump %s", p)
            try:
                for p in d.glob(".*.fifo"):
                    files.remove_quietly(p)
            except OSError:
                pass
