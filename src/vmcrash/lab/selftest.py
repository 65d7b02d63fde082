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

__all__ = ["SelftestOptions", "StepResult", "SelftestReport", "SelftestRun", "STEPS", "run_selftest"]

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class SelftestOptions:
    """Knobs of a selftest run (defaults: a small, quick guest)."""

    memory_mib: int = 512
    vcpus: int = 1
    fill_mb: int = 0
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
    spec = GuestSpec(memory_mib=o.memory_mib, vcpus=o.vcpus, fill_mb=o.fill_mb,
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


#: The steps, in order. Later capabilities append theirs.
STEPS: list[tuple[str, StepFn]] = [
    ("boot", step_boot),
    ("agent", step_agent),
    ("crash", step_crash),
    ("panic-event", step_panic_event),
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
