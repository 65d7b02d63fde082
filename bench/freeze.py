"""Benchmark: how long a panicked guest stays frozen, and how big its dump is — vmcrash vs libvirt.

In one run, on the same lab guests (2 GiB with 1 GiB of random data, and an idle 2 GiB guest):

* ``builtin``      libvirt's ``<on_crash>coredump-restart</on_crash>`` (raw ELF, then reset)
* ``virsh-elf``    ``virsh dump --memory-only --format elf`` on the crashed guest, then reset+resume
* ``virsh-kdump``  ``virsh dump --memory-only --format kdump-zlib``, then reset+resume
* ``vmcrash-staged``    ``vmcrash watch`` (streamed, staged in tmpfs, recovery reset)
* ``vmcrash-direct-disk`` ``vmcrash watch`` (streamed straight to the dump dir, recovery reset)

Freeze = CRASHED event (panic) → libvirt reports the guest running again, measured by this
process from libvirt's events and state, the same way for every method. "on disk" is what the
dump occupies when the guest runs again (allocated blocks, for vmcrash in the dump dir or the
tmpfs); "final" is after vmcrash's background compaction to seekable kdump.

Usage: ``python bench/freeze.py [--quick]`` (``--quick``: only the idle guest, 1 GiB).
Prints a table and ratios against the built-in; ``--json FILE`` saves the numbers.

``--modes`` (issue 10) instead runs the capture modes with the default recovery (``auto``: restart
when the image is held, else reset) on
guests of ``--sizes`` GiB (default 1,2,4,8), idle and half filled with random data, memfd-backed
and anonymous: the built-in ``coredump-restart`` against ``vmcrash watch`` with the default
policy, ``capture = auto`` (= ``hold`` + restart on memfd guests, ``copy`` + reset on anonymous
ones), and with ``capture = stream`` (+ reset), and ``capture = auto`` with ``recovery =
restart`` (a fresh QEMU whatever the mode). It prints the freeze (panic → running), the bytes held, the time until the
dump file is complete, ratios, and the issue's goals checked against this run.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import libvirt

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

from vmcrash.host import aio  # noqa: E402
from vmcrash.host.connection import Hypervisor  # noqa: E402
from vmcrash.host.events import Subscription, wait_for_panic  # noqa: E402
from vmcrash.lab.daemons import LibvirtDaemons  # noqa: E402
from vmcrash.lab.guest import GuestSpec, LabGuest  # noqa: E402
from vmcrash.store.catalog import Catalog  # noqa: E402

LIBVIRT_DUMP_DIR = Path("/var/lib/libvirt/qemu/dump")
MiB = 1024 * 1024


def allocated(path: Path) -> int:
    try:
        return os.stat(path).st_blocks * 512
    except FileNotFoundError:
        return 0


def wait_running(dom: libvirt.virDomain, timeout_s: float = 600) -> int:
    """Poll (10 ms: a busier loop steals CPU from the dump on 2 cores) until libvirt reports
    running; return host wall ns."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if dom.state()[0] == libvirt.VIR_DOMAIN_RUNNING:
            return time.time_ns()
        time.sleep(0.01)
    raise TimeoutError("guest did not run again")


def crash_and_time(guest: LabGuest, events: Any) -> int:
    """Crash the guest; return the host wall ns of the CRASHED event."""
    while not events.empty():
        events.get_nowait()
    guest.crash()
    ev = wait_for_panic(events, guest.name, 120)
    if ev is None:
        raise RuntimeError("no panic event")
    return ev.received_ns


def ready_again(guest: LabGuest, marks_before: int, timeout_s: float = 600) -> None:
    deadline = time.monotonic() + timeout_s
    while guest.serial_text().count("vmcrash-lab: ready") <= marks_before:
        if time.monotonic() > deadline:
            raise TimeoutError("guest did not become ready again")
        time.sleep(0.2)
    guest.wait_ready(timeout_s)


def run_builtin(hv: Hypervisor, spec: GuestSpec, events: Any) -> dict[str, Any]:
    before = set(LIBVIRT_DUMP_DIR.iterdir()) if LIBVIRT_DUMP_DIR.exists() else set()
    with LabGuest(GuestSpec(**{**spec.__dict__, "on_crash": "coredump-restart"}), hv=hv) as g:
        g.boot(600)
        panic_ns = crash_and_time(g, events)
        time.sleep(0.05)
        # libvirt moves crashed -> (dump) -> running; wait for running after the crash
        while g.state()[0] == "running":
            if time.time_ns() - panic_ns > 5e9:
                break
            time.sleep(0.01)
        running_ns = wait_running(g.dom)
        # only this guest's file (<id>-<name cut to 20>-<time>): others may be adopting theirs meanwhile
        new = [p for p in LIBVIRT_DUMP_DIR.iterdir() if p not in before
               and p.name.split("-", 1)[-1].startswith(g.name[:20] + "-")]
        size = sum(p.stat().st_size for p in new)
        disk = sum(allocated(p) for p in new)
        for p in new:
            p.unlink()
    return {"freeze_s": (running_ns - panic_ns) / 1e9, "size_bytes": size, "on_disk_bytes": disk,
            "final_bytes": disk}


def run_virsh(hv: Hypervisor, guest: LabGuest, events: Any, fmt: str, tmp: Path) -> dict[str, Any]:
    marks = guest.serial_text().count("vmcrash-lab: ready")
    panic_ns = crash_and_time(guest, events)
    out = tmp / f"virsh.{fmt}"
    subprocess.run(["virsh", "-c", "qemu:///system", "dump", "--memory-only", "--format", fmt, guest.name,
                    str(out)], check=True, capture_output=True)
    guest.dom.reset(0)
    if guest.dom.state()[0] == libvirt.VIR_DOMAIN_PAUSED:
        guest.dom.resume()
    running_ns = wait_running(guest.dom)
    result = {"freeze_s": (running_ns - panic_ns) / 1e9, "size_bytes": out.stat().st_size,
              "on_disk_bytes": allocated(out), "final_bytes": allocated(out)}
    out.unlink()
    ready_again(guest, marks)
    return result


def run_vmcrash(hv: Hypervisor, guest: LabGuest, events: Any, tmp: Path, *, staged: bool) -> dict[str, Any]:
    work = tmp / ("vmcrash-staged" if staged else "vmcrash-disk")
    work.mkdir()
    shm = Path("/dev/shm") / f"vmcrash-bench-{os.getpid()}"
    shm.mkdir(exist_ok=True)
    cfg = work / "vmcrash.toml"
    cfg.write_text(f'dump_dir = "{work / "dumps"}"\ncatalog = "{work / "catalog.sqlite"}"\nmin_free_mib = 64\n'
                   f'[clock]\nsweep_interval_s = 0\nsync_after_recovery = false\n'
                   f'[staging]\ntmpfs_dir = "{shm}"\ntmpfs = "{"always" if staged else "never"}"\n'
                   f'compact = true\n'
                   f'[domains."*"]\nwatch = false\n[domains."{guest.name}"]\nwatch = true\nrecovery = "reset"\n')
    log = open(work / "watch.log", "wb")
    proc = subprocess.Popen([sys.executable, "-m", "vmcrash.cli.main", "--config", str(cfg), "-v", "watch"],
                            stdout=log, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 60
        while b"reconciled:" not in (work / "watch.log").read_bytes():
            if time.monotonic() > deadline or proc.poll() is not None:
                raise RuntimeError("daemon did not start")
            time.sleep(0.1)
        marks = guest.serial_text().count("vmcrash-lab: ready")
        panic_ns = crash_and_time(guest, events)
        time.sleep(0.02)
        running_ns = wait_running(guest.dom)
        # bytes on disk right when the guest runs again: staged file in tmpfs, or partial in dump dir
        on_disk = sum(allocated(p) for d in (work / "dumps", shm / "vmcrash-staging") if d.exists()
                      for p in d.iterdir())
        cat = Catalog(work / "catalog.sqlite")
        deadline = time.monotonic() + 900
        while True:
            rows = cat.crashes()
            if rows and rows[0].state in ("done", "failed") and rows[0].compact_state in ("done", "failed", None):
                break
            if time.monotonic() > deadline:
                raise RuntimeError(f"not handled: {[(r.state, r.compact_state) for r in rows]}")
            time.sleep(0.2)
        row = rows[0]
        cap = row.capture or {}
        comp = row.compact or {}
        result = {"freeze_s": (running_ns - panic_ns) / 1e9, "size_bytes": cap.get("stream_bytes"),
                  "on_disk_bytes": on_disk, "final_bytes": allocated(Path(row.compact_path)) if row.compact_path
                  else allocated(Path(row.dump_path or "/nonexistent")),
                  "dump_s": cap.get("seconds"), "zero_pages": cap.get("zero_pages_skipped"),
                  "written_bytes": cap.get("written_bytes"), "compaction_s": comp.get("seconds"),
                  "codec": comp.get("codec"), "vmcrash_freeze_s": row.freeze_s, "staged": cap.get("staged_in")}
        cat.close()
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(120)
        shutil.rmtree(shm, ignore_errors=True)
        shutil.rmtree(work, ignore_errors=True)
    ready_again(guest, marks)
    return result


def run_vmcrash_mode(hv: Hypervisor, guest: LabGuest, events: Any, tmp: Path, *, capture: str,
                     recovery: str = "auto") -> dict[str, Any]:
    """One panic handled by ``vmcrash watch`` with ``capture``/``recovery``; freeze measured here."""
    work = tmp / f"vmcrash-{capture}-{time.monotonic_ns()}"
    work.mkdir()
    shm = Path("/dev/shm") / f"vmcrash-bench-{os.getpid()}"
    shm.mkdir(exist_ok=True)
    cfg = work / "vmcrash.toml"
    cfg.write_text(f'dump_dir = "{work / "dumps"}"\ncatalog = "{work / "catalog.sqlite"}"\nmin_free_mib = 64\n'
                   f'[clock]\nsweep_interval_s = 0\nsync_after_recovery = false\n'
                   f'[staging]\ntmpfs_dir = "{shm}"\ncompact = false\n'
                   f'[domains."*"]\nwatch = false\n[domains."{guest.name}"]\nwatch = true\n'
                   f'recovery = "{recovery}"\ncapture = "{capture}"\n')
    log = open(work / "watch.log", "wb")
    proc = subprocess.Popen([sys.executable, "-m", "vmcrash.cli.main", "--config", str(cfg), "-v", "watch"],
                            stdout=log, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 60
        while b"reconciled:" not in (work / "watch.log").read_bytes():
            if time.monotonic() > deadline or proc.poll() is not None:
                raise RuntimeError("daemon did not start")
            time.sleep(0.1)
        marks = guest.serial_text().count("vmcrash-lab: ready")
        panic_ns = crash_and_time(guest, events)
        time.sleep(0.02)
        running_ns = wait_running(guest.dom)
        cat = Catalog(work / "catalog.sqlite")
        deadline = time.monotonic() + 900
        while True:
            rows = cat.crashes()
            if rows and rows[0].state in ("done", "failed"):
                break
            if time.monotonic() > deadline:
                raise RuntimeError(f"not handled: {[r.state for r in rows]}")
            time.sleep(0.1)
        row = rows[0]
        cap = row.capture or {}
        extra = cap.get("extra") or {}
        result = {"freeze_s": (running_ns - panic_ns) / 1e9, "size_bytes": cap.get("stream_bytes"),
                  "mode": cap.get("mode"), "reason": (extra.get("choice") or cap.get("choice") or {}).get("reason"),
                  "held_bytes": cap.get("held_bytes") or 0, "hold_s": cap.get("hold_seconds"),
                  "complete_s": (row.dump_ended_ns - panic_ns) / 1e9 if row.dump_ended_ns else None,
                  "dump_s": cap.get("seconds"), "written_bytes": cap.get("written_bytes"),
                  "on_disk_bytes": allocated(Path(row.dump_path or "/nonexistent")), "state": row.state,
                  "error": row.error}
        result["final_bytes"] = result["on_disk_bytes"]
        # where the freeze went: the crash's own log, in seconds after the panic event
        result["timeline"] = [(e["kind"], round((e["at_ns"] - panic_ns) / 1e9, 3)) for e in cat.events(row.id)]
        cat.close()
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(120)
        shutil.rmtree(shm, ignore_errors=True)
        shutil.rmtree(work, ignore_errors=True)
    ready_again(guest, marks)
    return result


def _ours_cleanup(hv: Hypervisor) -> None:
    """Destroy and undefine this process's lab domains (left behind when libvirtd went away)."""
    from vmcrash.lab.guest import destroy_and_undefine

    for dom in hv.domains():
        if dom.name().startswith(f"vmcrash-lab-{os.getpid()}-"):
            try:
                destroy_and_undefine(dom)
            except Exception as exc:  # best effort: report and go on
                print(f"   cleanup of {dom.name()}: {exc}", flush=True)


def bench_modes(hv: Hypervisor, events: Any, sizes_gib: list[int], tmp: Path, fills: list[str],
                backings: list[str]) -> list[dict[str, Any]]:
    """Built-in vs vmcrash auto vs vmcrash stream, one run each, per (size, fill, backing).

    The host is shared: when libvirtd is restarted under the benchmark (its connection dies), the
    combination is run again on a new connection (at most 3 tries).
    """
    from vmcrash.errors import VmcrashError

    out = []
    for gib in sizes_gib:
        for fill in fills:
            for backing in backings:
                for attempt in range(3):
                    try:
                        out.append(_bench_one(hv, events, gib, fill, backing, tmp))
                        break
                    except (VmcrashError, libvirt.libvirtError) as exc:
                        print(f"   attempt {attempt + 1} lost: {exc}; reconnecting", flush=True)
                        time.sleep(5)
                        hv.reconnect()
                        _ours_cleanup(hv)
                        sub, events = Subscription.to_queue(hv)
    return out


def _bench_one(hv: Hypervisor, events: Any, gib: int, fill: str, backing: str, tmp: Path) -> dict[str, Any]:
    spec = GuestSpec(memory_mib=gib * 1024, fill_mib=gib * 512 if fill == "half" else 0,
                     memory_backing=backing)  # type: ignore[arg-type]
    print(f"== {gib} GiB {fill} {backing}", flush=True)
    res: dict[str, Any] = {"gib": gib, "fill": fill, "backing": backing, "builtin": run_builtin(hv, spec, events)}
    print(f"   builtin {res['builtin']}", flush=True)
    with LabGuest(spec, hv=hv) as g:
        g.boot(900)
        for capture, recovery in (("auto", "auto"), ("stream", "auto"), ("auto+restart", "restart")):
            res[capture] = run_vmcrash_mode(hv, g, events, tmp, capture=capture.split("+")[0], recovery=recovery)
            timeline = res[capture].pop("timeline")
            print(f"   {capture} {res[capture]}", flush=True)
            print("      timeline: " + ", ".join(f"{k} {t:.2f}" for k, t in timeline), flush=True)
    print("   " + ", ".join(f"{k} {res[k]['freeze_s']:.2f} s" for k in ("builtin", "auto", "stream", "auto+restart")
                           if k in res), flush=True)
    return res


def report_modes(rows: list[dict[str, Any]]) -> None:
    print(f"\n{'guest':<24} {'method':<12} {'mode':<7} {'freeze s':>8} {'x builtin':>9} {'held MiB':>9} "
          f"{'complete s':>10} {'on disk MiB':>11}")
    for r in rows:
        base = r["builtin"]["freeze_s"]
        for k in [k for k in ("builtin", "auto", "stream", "auto+restart") if k in r]:
            x = r[k]
            comp = x.get("complete_s")
            print(f"{r['gib']} GiB {r['fill']} {r['backing']:<10} {k:<12} {x.get('mode') or 'elf':<7} "
                  f"{x['freeze_s']:>8.2f} {x['freeze_s'] / base:>9.2f} {(x.get('held_bytes') or 0) / MiB:>9.0f} "
                  f"{comp if comp is not None else float('nan'):>10.2f} {x['on_disk_bytes'] / MiB:>11.0f}")
    print()
    for fill in ("half", "idle"):
        holds = sorted((r["gib"], r["auto"]["freeze_s"]) for r in rows if r["auto"].get("mode") == "hold"
                       and r["fill"] == fill)
        if len(holds) >= 2:
            print(f"hold freeze, largest/smallest guest ({fill}): {holds[-1][1] / holds[0][1]:.2f}x "
                  f"({holds[-1][0]} GiB vs {holds[0][0]} GiB; goal <= 1.25x at 8 vs 1 GiB)")
    for gib, fill, backing, goal in ((8, "half", "memfd", 0.15), (2, "half", "anonymous", 0.3),
                                     (2, "idle", "anonymous", 0.2)):
        r = next((r for r in rows if (r["gib"], r["fill"], r["backing"]) == (gib, fill, backing)), None)
        if r is not None:
            x = r["auto"]["freeze_s"] / r["builtin"]["freeze_s"]
            print(f"goal {gib} GiB {fill} {backing}, default policy ({r['auto'].get('mode')}): {x:.2f}x built-in "
                  f"(goal <= {goal}x): {'met' if x <= goal else 'NOT met'}")


def median_run(samples: list[dict[str, Any]]) -> dict[str, Any]:
    """The sample with the median freeze (all samples kept under ``samples``)."""
    ordered = sorted(samples, key=lambda r: r["freeze_s"])
    return {**ordered[len(ordered) // 2], "samples": [r["freeze_s"] for r in samples]}


def bench_profile(hv: Hypervisor, events: Any, name: str, spec: GuestSpec, tmp: Path,
                  repeat: int) -> dict[str, Any]:
    runs: dict[str, list[dict[str, Any]]] = {}
    print(f"== {name}: {spec.memory_mib} MiB guest, {spec.fill_mib} MiB random, {repeat} run(s) each", flush=True)
    for _ in range(repeat):
        runs.setdefault("builtin", []).append(run_builtin(hv, spec, events))
    print(f"   builtin: {[round(r['freeze_s'], 2) for r in runs['builtin']]} s", flush=True)
    with LabGuest(spec, hv=hv) as g:
        g.boot(600)
        for _ in range(repeat):  # interleaved, so that drift on the host hits every method alike
            runs.setdefault("virsh-elf", []).append(run_virsh(hv, g, events, "elf", tmp))
            runs.setdefault("virsh-kdump", []).append(run_virsh(hv, g, events, "kdump-zlib", tmp))
            runs.setdefault("vmcrash-staged", []).append(run_vmcrash(hv, g, events, tmp, staged=True))
            runs.setdefault("vmcrash-direct-disk", []).append(run_vmcrash(hv, g, events, tmp, staged=False))
            print("   round: " + ", ".join(f"{k} {v[-1]['freeze_s']:.2f} s" for k, v in runs.items()
                                          if k != "builtin"), flush=True)
    return {method: median_run(samples) for method, samples in runs.items()}


def report(all_results: dict[str, dict[str, Any]]) -> None:
    for profile, results in all_results.items():
        base = results["builtin"]
        elf = results["virsh-elf"]["size_bytes"] or 1
        print(f"\n{profile} (median freeze of the runs)")
        print(f"  {'method':<20} {'freeze s':>9} {'x builtin':>9} {'on disk MiB':>12} {'final MiB':>10} "
              f"{'final/ELF':>9}")
        for method, r in results.items():
            print(f"  {method:<20} {r['freeze_s']:>9.2f} {r['freeze_s'] / base['freeze_s']:>9.2f} "
                  f"{r['on_disk_bytes'] / MiB:>12.0f} {r['final_bytes'] / MiB:>10.0f} {r['final_bytes'] / elf:>9.3f}")


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--quick", action="store_true", help="idle 1 GiB guest only")
    ap.add_argument("--json", type=Path, default=None)
    ap.add_argument("--repeat", type=int, default=3, help="runs per method (the median is reported)")
    ap.add_argument("--modes", action="store_true", help="issue 10: capture modes, restart, sizes x fill x backing")
    ap.add_argument("--sizes", default="1,2,4,8", help="with --modes: guest sizes in GiB")
    ap.add_argument("--fills", default="idle,half", help="with --modes: idle and/or half")
    ap.add_argument("--backings", default="memfd,anonymous", help="with --modes: memfd and/or anonymous")
    args = ap.parse_args()
    if args.modes:
        with LibvirtDaemons():
            aio.event_loop()
            hv = Hypervisor()
            sub, events = Subscription.to_queue(hv)
            with tempfile.TemporaryDirectory(prefix="vmcrash-bench-", dir="/var/tmp") as tmp:
                rows = bench_modes(hv, events, [int(x) for x in args.sizes.split(",")], Path(tmp),
                                   args.fills.split(","), args.backings.split(","))
            sub.close()
            hv.close()
        report_modes(rows)
        if args.json:
            args.json.write_text(json.dumps(rows, indent=2))
        return 0
    profiles = {"idle 1 GiB": GuestSpec(memory_mib=1024)} if args.quick else {
        "2 GiB, 1 GiB random": GuestSpec(memory_mib=2048, fill_mib=1024),
        "idle 2 GiB": GuestSpec(memory_mib=2048),
    }
    with LibvirtDaemons():
        aio.event_loop()
        hv = Hypervisor()
        sub, events = Subscription.to_queue(hv)
        all_results = {}
        with tempfile.TemporaryDirectory(prefix="vmcrash-bench-", dir="/var/tmp") as tmp:
            for name, spec in profiles.items():
                all_results[name] = bench_profile(hv, events, name, spec, Path(tmp), args.repeat)
        sub.close()
        hv.close()
    report(all_results)
    if args.json:
        args.json.write_text(json.dumps(all_results, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
