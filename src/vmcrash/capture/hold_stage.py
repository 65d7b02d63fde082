"""The ``hold`` steps of one crash handling: choose the mode, hold, triage first, write behind.

:class:`HoldStage` is handed the catalogue, the configuration and the daemon's stop event by
:class:`~vmcrash.capture.pipeline.CrashHandler`; the pipeline calls, in order:

1. :meth:`HoldStage.choose` — the capture mode and its reason, recorded in the crash's
   ``capture`` (``choice``); ``auto`` only holds with ``restart``/``destroy``, never ``reset``;
2. :meth:`HoldStage.hold` — while the guest sits panicked: QEMU's header + the held files. Any
   failure here falls back to the stream mode, recorded with its reason; the row moves to state
   ``captured`` and its ``capture.held`` is set, so a killed daemon's successor says the image was lost;
3. (the pipeline recovers the guest; :meth:`release` frees the image if the guest could not start);
4. :meth:`HoldStage.write_behind` — the triage of the held image is recorded at once, then the
   dump is written from the image into the ``.partial`` file; on SIGTERM the write may run for
   ``staging.hold_shutdown_s`` more, then it is given up and that is recorded.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import libvirt

from vmcrash.capture import files
from vmcrash.capture.dumping import DumpProgress, DumpStats
from vmcrash.capture.hold import (
    HeldImage,
    HoldRegistry,
    Mode,
    ModeChoice,
    backing_of_xml,
    candidate_mode,
    choose_mode,
    copy_image,
    grab_dump_header,
    guard_decision,
    hold_image,
    memory_need,
    triage_held,
    write_held,
)
from vmcrash.capture.staging import mem_available_bytes
from vmcrash.config import Config, DomainPolicy
from vmcrash.errors import LibvirtUnavailable, VmcrashError
from vmcrash.host import qemu_memory
from vmcrash.host.connection import call
from vmcrash.store.catalog import Catalog
from vmcrash.store.states import CrashState

__all__ = ["HoldStage"]

log = logging.getLogger(__name__)


class HoldStage:
    """Hold-mode steps for a :class:`CrashHandler` (one per daemon; thread-safe)."""

    def __init__(self, cfg: Config, catalog: Catalog, stop: threading.Event) -> None:
        self.cfg = cfg
        self.catalog = catalog
        self.stop = stop
        self.registry = HoldRegistry()
        self._stop_seen_at: float | None = None
        self._lock = threading.Lock()

    # -- 1. the mode -----------------------------------------------------------------------

    def choose(self, crash_id: int, dom: libvirt.virDomain, info: Any, policy: DomainPolicy,
               action: str, requested: str | None = None) -> ModeChoice:
        """The capture mode for this crash (``requested`` overrides the policy's), recorded in its log."""
        requested = requested or policy.capture
        fallback = self.cfg.staging.mode
        backing = "anonymous"
        if requested in ("auto", "hold", "copy"):
            try:
                backing = backing_of_xml(dom.XMLDesc(0))
            except libvirt.libvirtError:
                backing = "anonymous"
        cand = candidate_mode(requested=requested, recovery=action, backing=backing, fallback=fallback)
        guard: tuple[bool, str] | None = None
        if cand.mode in (Mode.HOLD, Mode.COPY):
            try:
                private, shared = qemu_memory.qemu_rss(qemu_memory.qemu_pid(info.name))
            except VmcrashError as exc:
                guard = (False, f"cannot size the crashed QEMU ({exc})")
            else:
                st = self.cfg.staging
                need = memory_need(cand.mode, recovery=action, guest_ram_bytes=info.memory_bytes,
                                   private_rss_bytes=private, shared_rss_bytes=shared)
                guard = guard_decision(mem_available_bytes=mem_available_bytes(), need=need,
                                       headroom_bytes=st.hold_headroom_mib << 20,
                                       held_now=self.registry.count(), max_held=st.max_held_images)
        choice = choose_mode(requested=requested, recovery=action, backing=backing, fallback=fallback,
                             guard=guard)
        self.catalog.log(crash_id, "capture-mode", f"{choice.mode.value}: {choice.reason}")
        return choice

    # -- 2. hold ---------------------------------------------------------------------------

    def hold(self, crash_id: int, dom: libvirt.virDomain, info: Any, choice: ModeChoice,
             work_dir: Path, dlog: logging.Logger) -> tuple[HeldImage | None, ModeChoice]:
        """Hold (or copy) the image; on failure return ``(None, fallback choice)`` with the reason recorded.

        A guest that is still running (a manual dump) is paused first: nothing may change under
        the copy, and QEMU's header dump must not resume it; the recovery resumes it.
        """
        t0 = time.monotonic()
        try:
            pid = qemu_memory.qemu_pid(info.name)
            if call(dom.state, domain=info.name)[0] == libvirt.VIR_DOMAIN_RUNNING:
                call(dom.suspend, domain=info.name)
                self.catalog.log(crash_id, "paused", f"paused for the {choice.mode.value}")
            header = grab_dump_header(dom, work_dir)
            if choice.mode is Mode.COPY:
                image = copy_image(dom, info.name, pid, header, limit_bytes=info.memory_bytes + (64 << 20))
            else:
                image = hold_image(dom, info.name, pid, header)
        except LibvirtUnavailable:
            raise
        except VmcrashError as exc:
            fb = ModeChoice(Mode(self.cfg.staging.mode), f"{choice.mode.value} failed ({exc}); {self.cfg.staging.mode}",
                            choice.requested)
            self.catalog.log(crash_id, "capture-mode", f"{fb.mode.value}: {fb.reason}")
            dlog.warning("hold failed, falling back: %s", exc)
            return None, fb
        self.registry.add(crash_id, image)
        held = image.held_bytes()
        self.catalog.advance(crash_id, CrashState.CAPTURED, capture={
            "mode": choice.mode.value, "held": True, "choice": choice.to_dict(), "held_bytes": held,
            "hold_seconds": round(time.monotonic() - t0, 4), "files": image.files})
        took_ms = (time.monotonic() - t0) * 1e3
        if choice.mode is Mode.COPY:
            self.catalog.log(crash_id, "held", f"image copied: {held >> 20} MiB in {took_ms:.0f} ms")
        else:
            self.catalog.log(crash_id, "held", f"image held: {held >> 20} MiB in {len(image.fds)} file(s), "
                                               f"{took_ms:.0f} ms")
        dlog.info("crashed image %s (%d MiB in %.0f ms); recovering at once",
                  "copied" if choice.mode is Mode.COPY else "held", held >> 20, took_ms)
        return image, choice

    def start_triage(self, image: HeldImage) -> tuple[threading.Thread, dict[str, Any]]:
        """Triage the held image in a thread (it overlaps the recovery)."""
        out: dict[str, Any] = {}

        def run() -> None:
            t0 = time.monotonic()
            out["triage"], out["error"] = triage_held(image)
            out["seconds"] = time.monotonic() - t0

        t = threading.Thread(target=run, name=f"hold-triage:{image.domain}", daemon=True)
        t.start()
        return t, out

    def release(self, crash_id: int, why: str) -> None:
        self.registry.release(crash_id)
        self.catalog.log(crash_id, "released", why)

    # -- 4. write behind ------------------------------------------------------------------

    def record_triage(self, crash_id: int, thread: threading.Thread, out: dict[str, Any],
                      wait_s: float = 120.0) -> None:
        """Record the held image's triage (waiting for its thread at most ``wait_s``)."""
        thread.join(wait_s)
        triage = out.get("triage")
        error = out.get("error") or (None if triage else "triage did not finish")
        self.catalog.update(crash_id, triage=triage)
        self.catalog.log(crash_id, "triage", f"from the held image in {out.get('seconds', 0):.2f} s: "
                         + (str((triage or {}).get("panic_line") or "no panic line found") if triage else str(error)))

    def _give_up(self) -> str | None:
        if not self.stop.is_set():
            return None
        with self._lock:
            if self._stop_seen_at is None:
                self._stop_seen_at = time.monotonic()
            waited = time.monotonic() - self._stop_seen_at
        limit = self.cfg.staging.hold_shutdown_s
        return f"daemon stopping, {limit:g} s to finish exceeded" if waited > limit else None

    def write_behind(self, crash_id: int, image: HeldImage, choice: ModeChoice, names: files.DumpName,
                     dlog: logging.Logger, progress: Callable[[DumpProgress], None] | None = None
                     ) -> tuple[DumpStats | None, str | None]:
        """Write the dump from the held image into ``names.partial``; always releases the image."""
        planned = {"final": str(names.final), "partial": str(names.partial), "sidecar": str(names.sidecar),
                   "target": str(names.partial)}
        base = {"mode": choice.mode.value, "held": True, "choice": choice.to_dict(), "held_bytes": image.held_bytes(),
                "hold_seconds": round(image.hold_seconds, 4), "planned": planned}
        self.catalog.update(crash_id, dump_temp_path=str(names.partial), dump_format="elf",
                            dump_started_ns=time.time_ns(), capture=base)
        t0 = time.monotonic()

        def on_progress(done_bytes: int, total_bytes: int) -> None:
            if progress is not None:
                progress(DumpProgress(done_bytes, total_bytes, time.monotonic() - t0))

        try:
            stats = write_held(image, names.partial, give_up=self._give_up, progress=on_progress,
                               max_bytes_s=self.cfg.staging.hold_write_mib_s * (1 << 20))
        except VmcrashError as exc:
            files.remove_quietly(names.partial)
            msg = f"dump from the held image failed: {exc}"
            self.catalog.update(crash_id, dump_temp_path=None, capture={**base, "held": False, "error": str(exc)})
            self.catalog.log(crash_id, "dump-failed", msg)
            dlog.error("%s", msg)
            return None, msg
        finally:
            self.registry.release(crash_id)
        stats.mode = choice.mode.value
        stats.extra.update({"choice": choice.to_dict(), "held_bytes": base["held_bytes"],
                            "hold_seconds": base["hold_seconds"]})
        self.catalog.update(crash_id, dump_ended_ns=stats.ended_ns,
                            capture={**stats.to_dict(), **base, "held": False})
        self.catalog.log(crash_id, "dumped", f"{stats.stream_bytes} bytes from the held image in {stats.seconds:.2f} s "
                                             f"({stats.written_bytes} written, "
                                             f"{stats.extra.get('data_read_bytes', 0)} read); image released")
        dlog.info("dump written from the held image: %d MiB in %.2f s", stats.stream_bytes >> 20, stats.seconds)
        return stats, None
