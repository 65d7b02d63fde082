"""``vmcrash selftest``: crash a throwaway guest on this host and check every step of the handling.

The test is a list of named steps run in order over one :class:`SelftestRun`; each step returns
a one-line detail or raises. The first failure ends the run (later steps are reported as not
run). Capabilities add their steps to :data:`STEPS`.
"""

from __future__ import annotations

import logging
import queue
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from typing import Any

from vmcrash.errors import VmcrashError
from vmcrash.store.catalog import FINAL_STATES

__all__ = ["SelftestOptions", "StepResult", "SelftestReport", "SelftestRun", "STEPS", "run_selftest"]

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class SelftestOptions:
    """Knobs of a selftest run (defaults: a small, quick guest)."""

    memory_mib: int = 512
    vcpus: int = 1
    fill_mib: int = 0
    panic_model: str = "isa"
    boot_timeout_s: float = 180.0
    panic_timeout_s: float = 60.0
    uri: str = "qemu:///system"


@dataclass(frozen=True)
class StepResult:
    """Outcome of one step. ``status``: ``"ok"``, ``"fail"`` or ``"not-run"``."""

    name: str
    status: str
    duration_s: float
    detail: str
    data: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class SelftestReport:
    """The whole run: ``passed`` only when every step is ok."""

    passed: bool
    steps: list[StepResult]
    duration_s: float
    domain: str

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready form (the ``--json`` output)."""
        return {
            "result": "PASS" if self.passed else "FAIL",
            "domain": self.domain,
            "duration_s": round(self.duration_s, 3),
            "steps": [
                {**asdict(s), "duration_s": round(s.duration_s, 3)} for s in self.steps
            ],
        }


@dataclass
class SelftestRun:
    """State shared by the steps of one run."""

    options: SelftestOptions
    hv: Any = None
    guest: Any = None
    subscription: Any = None
    events: queue.Queue[Any] | None = None
    panic_event: Any = None
    crash_wall_ns: int = 0
    data: dict[str, Any] = field(default_factory=dict)
    cleanups: list[Callable[[], None]] = field(default_factory=list)


StepFn = Callable[[SelftestRun], tuple[str, dict[str, Any]]]


def step_boot(run: SelftestRun) -> tuple[str, dict[str, Any]]:
    """Build the lab image, define a throwaway guest and boot it to its ready mark."""
    from vmcrash.host import aio
    from vmcrash.host.connection import Hypervisor
    from vmcrash.host.events import Subscription
    from vmcrash.lab.guest import GuestSpec, LabGuest, sweep_stale
    from vmcrash.lab.image import build_image

    aio.event_loop()  # before the connection, so its events are dispatched
    run.hv = Hypervisor(run.options.uri)
    run.cleanups.append(run.hv.close)
    sweep_stale(run.hv)
    image = build_image()
    o = run.options
    spec = GuestSpec(memory_mib=o.memory_mib, vcpus=o.vcpus, fill_mib=o.fill_mib,
                     panic_model=o.panic_model)  # type: ignore[arg-type]
    run.guest = LabGuest(spec, hv=run.hv, image=image)
    run.cleanups.append(run.guest.cleanup)
    run.subscription, run.events = Subscription.to_queue(run.hv)
    run.cleanups.append(run.subscription.close)
    seconds = run.guest.boot(o.boot_timeout_s)
    return (f"{run.guest.name}: {o.memory_mib} MiB, {o.vcpus} vCPU, accel={run.guest.accel}, "
            f"kernel {image.kernel_release}, ready in {seconds:.1f} s",
            {"accel": run.guest.accel, "kernel_release": image.kernel_release, "ready_s": seconds})


def step_agent(run: SelftestRun) -> tuple[str, dict[str, Any]]:
    """The guest agent answers guest-get-time."""
    agent = run.guest.agent()
    before = time.time_ns()
    guest_ns = agent.get_time_ns()
    after = time.time_ns()
    offset_ms = (guest_ns - (before + after) / 2) / 1e6
    return (f"guest-get-time answered, guest clock {offset_ms:+.1f} ms from host",
            {"offset_ms": offset_ms, "rtt_ms": (after - before) / 1e6})


def step_crash(run: SelftestRun) -> tuple[str, dict[str, Any]]:
    """Make the guest kernel panic through the agent (sysrq c)."""
    run.crash_wall_ns = time.time_ns()
    run.guest.crash()
    return "sysrq 'c' sent through guest-exec", {}


def step_panic_event(run: SelftestRun) -> tuple[str, dict[str, Any]]:
    """libvirt reports the panic: lifecycle event CRASHED/PANICKED (or the state reason)."""
    from vmcrash.host.events import wait_for_panic

    assert run.events is not None
    ev = wait_for_panic(run.events, run.guest.name, run.options.panic_timeout_s)
    state, reason = run.guest.state()
    if ev is None:
        raise VmcrashError(f"no CRASHED event within {run.options.panic_timeout_s:.0f} s "
                           f"(domain state {state}, reason {reason})")
    run.panic_event = ev
    latency_s = (ev.received_ns - run.crash_wall_ns) / 1e9
    return (f"event {ev.event.upper()}/{ev.detail.upper()} {latency_s:.2f} s after the trigger; "
            f"state {state}", {"event": ev.event, "detail": ev.detail, "state": state,
                               "latency_s": latency_s})


def step_watch(run: SelftestRun) -> tuple[str, dict[str, Any]]:
    """Start the capture daemon (in-process, the real :class:`~vmcrash.capture.watch.Watcher`),
    watching only the throwaway guest, with its own dump dir and catalogue."""
    import json as _json
    import tempfile
    from pathlib import Path

    from vmcrash.capture.watch import Runstate, Watcher
    from vmcrash.config import parse_config
    from vmcrash.host import aio

    base = Path("/var/lib/vmcrash/selftest")
    base.mkdir(parents=True, exist_ok=True, mode=0o700)
    work = Path(tempfile.mkdtemp(prefix="run-", dir=base))
    import shutil

    shm = Path("/dev/shm") / f"vmcrash-selftest-{work.name}"
    shm.mkdir(mode=0o700)
    run.cleanups.append(lambda: shutil.rmtree(work, ignore_errors=True))
    run.cleanups.append(lambda: shutil.rmtree(shm, ignore_errors=True))
    doc = {
        "libvirt_uri": run.options.uri,
        "dump_dir": str(work / "dumps"),
        "catalog": str(work / "catalog.sqlite"),
        "min_free_mib": 64,
        "clock": {"sweep_interval_s": 0, "agent_wait_s": 120},
        # its own staging dir: never touch the files of a production daemon on this host
        "staging": {"tmpfs_dir": str(Path("/dev/shm") / f"vmcrash-selftest-{work.name}")},
        # the throwaway guest gets the default policy (capture and recovery auto)
        "domains": {"*": {"watch": False}, run.guest.name: {"watch": True}},
    }
    cfg = parse_config(_json.loads(_json.dumps(doc)))
    watcher = Watcher(cfg)
    fut = aio.submit(watcher.run())

    def stop() -> None:
        watcher.request_stop()
        fut.result(timeout=120)

    run.cleanups.append(stop)
    deadline = time.monotonic() + 30
    while watcher.state != Runstate.RUNNING or not watcher.connections:
        if fut.done():
            fut.result()
        if time.monotonic() > deadline:
            raise VmcrashError("the daemon did not reach its running state within 30 s")
        time.sleep(0.05)
    run.data["watcher"] = watcher
    run.data["work"] = work
    return f"vmcrash watch running (dumps in {work / 'dumps'})", {"dump_dir": str(work / "dumps")}


def _crash_row(run: SelftestRun, timeout_s: float = 300.0) -> Any:
    """The catalogue row of this run's panic once its handling is finished."""
    row = run.data.get("row")
    if row is not None:
        return row
    watcher = run.data["watcher"]
    deadline = time.monotonic() + timeout_s
    while True:
        rows = watcher.catalog.crashes(domain=run.guest.name)
        if rows and rows[0].state in FINAL_STATES and run.guest.name not in watcher.active \
                and rows[0].uuid not in watcher.active:
            run.data["row"] = rows[0]
            return rows[0]
        if time.monotonic() > deadline:
            raise VmcrashError(f"the panic was not handled within {timeout_s:.0f} s "
                               f"(rows: {[(r.id, r.state) for r in rows]})")
        time.sleep(0.1)


def step_dump_written(run: SelftestRun) -> tuple[str, dict[str, Any]]:
    """The dump file exists under its final name, 0600, a valid ELF core of the guest's size, with sidecar."""
    import json as _json
    import stat
    from pathlib import Path

    row = _crash_row(run)
    if not row.dump_path:
        raise VmcrashError(f"no dump: {row.skip_reason or row.error}")
    path = Path(row.dump_path)
    st = path.stat()
    with open(path, "rb") as f:
        head = f.read(20)
    if head[:4] != b"\x7fELF" or head[16:18] != b"\x04\x00":
        raise VmcrashError(f"{path} is not an ELF core file")
    if stat.S_IMODE(st.st_mode) != 0o600:
        raise VmcrashError(f"{path} has mode {stat.S_IMODE(st.st_mode):o}, not 600")
    if st.st_size < run.options.memory_mib * 1024 * 1024:
        raise VmcrashError(f"{path} is smaller than the guest's memory")
    side = _json.loads(Path(row.sidecar_path).read_text())
    cap = row.capture or {}
    return (f"{path.name}: {st.st_size >> 20} MiB, {st.st_blocks * 512 >> 20} MiB on disk, "
            f"{cap.get('seconds', 0):.2f} s ({cap.get('mode')}), sha256 {side['sha256'][:12]}…",
            {"path": str(path), "size_bytes": st.st_size, "allocated_bytes": st.st_blocks * 512,
             "dump_s": cap.get("seconds")})


def step_guest_recovered(run: SelftestRun) -> tuple[str, dict[str, Any]]:
    """libvirt reports the guest running again, and its console shows a second boot."""
    row = _crash_row(run)
    state, _ = run.guest.state()
    if state != "running":
        raise VmcrashError(f"guest is {state} after recovery {row.recovery_action}")
    first = run.guest.serial_bytes().find(b"vmcrash-lab: ready")
    run.guest.wait_serial("vmcrash-lab: ready", 180, after=first + 1)
    return (f"{row.recovery_action}: running again {row.freeze_s:.2f} s after the panic, booted again",
            {"recovery": row.recovery_action, "freeze_s": row.freeze_s})


def step_clock_corrected(run: SelftestRun) -> tuple[str, dict[str, Any]]:
    """The daemon corrected the guest clock; an independent measurement confirms the residual error."""
    from vmcrash import clock

    row = _crash_row(run)
    c = row.clock or {}
    if not c.get("synced"):
        raise VmcrashError(f"clock not corrected: {c.get('error') or 'no clock record'}")
    est = clock.measure(run.guest.agent(), probes=8)
    error_ms = est.offset_ns / 1e6
    if abs(error_ms) > 20:
        raise VmcrashError(f"guest clock still {error_ms:+.1f} ms off after correction")
    return (f"{c['before_ms']:+.1f} ms -> {c['after_ms']:+.1f} ms; measured now {error_ms:+.2f} ms "
            f"(rtt {est.rtt_ns / 1e6:.2f} ms)", {"before_ms": c["before_ms"], "after_ms": c["after_ms"],
                                                  "measured_ms": error_ms})


def step_panic_identified(run: SelftestRun) -> tuple[str, dict[str, Any]]:
    """Triage of the dump names the same panic the guest printed on its serial console."""
    import re

    row = _crash_row(run)
    t = row.triage or {}
    panic = t.get("panic_line")
    if not panic:
        raise VmcrashError(f"triage found no panic line ({'; '.join(t.get('problems') or []) or 'no triage'})")
    console = [re.sub(r"^\[\s*[\d.]+\]\s*", "", ln).strip() for ln in run.guest.serial_text().splitlines()
               if "Kernel panic - not syncing" in ln]
    core = re.sub(r"^\[\s*[\d.]+\]\s*", "", panic).strip()
    if core not in console:
        raise VmcrashError(f"triage says {core!r}, the console says {console[:1]!r}")
    return f"{core} (RIP {t.get('rip_symbol')})", {"panic_line": core, "rip_symbol": t.get("rip_symbol")}


def step_catalogue_entry(run: SelftestRun) -> tuple[str, dict[str, Any]]:
    """The catalogue row is complete: event, dump, freeze, recovery, clock, triage."""
    row = _crash_row(run)
    missing = [k for k in ("dump_path", "dump_sha256", "sidecar_path", "freeze_s", "recovery_result", "clock",
                           "triage") if getattr(row, k) in (None, "")]
    if row.state != "done" or missing:
        raise VmcrashError(f"crash #{row.id} is {row.state}; missing {', '.join(missing) or '-'}")
    return f"crash #{row.id}: {row.state}, source {row.source}, {len(run.data['watcher'].catalog.events(row.id))} " \
           f"log entries", {"crash_id": row.id}


#: The steps, in order. Capabilities add theirs.
STEPS: list[tuple[str, StepFn]] = [
    ("boot", step_boot),
    ("agent", step_agent),
    ("watch", step_watch),
    ("crash", step_crash),
    ("panic-event", step_panic_event),
    ("dump-written", step_dump_written),
    ("guest-recovered", step_guest_recovered),
    ("clock-corrected", step_clock_corrected),
    ("panic-identified", step_panic_identified),
    ("catalogue-entry", step_catalogue_entry),
]


def run_selftest(options: SelftestOptions, on_step: Callable[[StepResult], None] | None = None,
                 steps: list[tuple[str, StepFn]] | None = None) -> SelftestReport:
    """Run ``steps`` (default :data:`STEPS`) and always clean up the throwaway guest."""
    from vmcrash.lab.daemons import LibvirtDaemons

    run = SelftestRun(options)
    results: list[StepResult] = []
    t_start = time.monotonic()
    daemons = LibvirtDaemons()
    failed = False
    try:
        daemons.start()
        for name, fn in steps or STEPS:
            if failed:
                res = StepResult(name, "not-run", 0.0, "an earlier step failed")
            else:
                t0 = time.monotonic()
                try:
                    detail, data = fn(run)
                    res = StepResult(name, "ok", time.monotonic() - t0, detail, data)
                except (VmcrashError, OSError, TimeoutError, AssertionError) as exc:
                    log.debug("step %s failed", name, exc_info=True)
                    res = StepResult(name, "fail", time.monotonic() - t0, str(exc) or type(exc).__name__)
                    failed = True
            results.append(res)
            if on_step:
                on_step(res)
    except VmcrashError as exc:
        res = StepResult("setup", "fail", time.monotonic() - t_start, str(exc))
        results.append(res)
        if on_step:
            on_step(res)
    finally:
        for cleanup in reversed(run.cleanups):
            try:
                cleanup()
            except Exception as exc:  # cleanup must go on
                log.warning("cleanup: %s", exc)
        daemons.stop()
    passed = bool(results) and all(r.status == "ok" for r in results)
    return SelftestReport(passed, results, time.monotonic() - t_start,
                          run.guest.name if run.guest is not None else "")
