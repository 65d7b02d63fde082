"""``vmcrash lab``: build the throwaway crash guest, probe acceleration, boot/crash variants, clean up."""

from __future__ import annotations

import json
import time
from typing import Any

import click

from vmcrash.cli._common import fill_mib_option
from vmcrash.errors import EXIT_FINDINGS, EXIT_OK

__all__ = ["lab"]


@click.group("lab")
def lab() -> None:
    """Throwaway crash guests built from this host's own kernel, busybox and qemu-guest-agent."""


@lab.command("build")
@click.option("--json", "as_json", is_flag=True)
def build(as_json: bool) -> None:
    """Build (or reuse from the cache) the lab kernel + initramfs."""
    from vmcrash.lab.image import build_image

    t0 = time.monotonic()
    image = build_image()
    info = {"hash": image.content_hash, "kernel_release": image.kernel_release,
            "kernel": str(image.kernel), "initrd": str(image.initrd),
            "seconds": round(time.monotonic() - t0, 3)}
    click.echo(json.dumps(info, indent=2) if as_json else
               f"lab image {image.content_hash}: kernel {image.kernel_release}\n  {image.kernel}\n  {image.initrd}")


@lab.command("probe")
@click.option("--json", "as_json", is_flag=True)
def probe(as_json: bool) -> None:
    """Say whether guests here run under KVM or TCG (boots a probe guest once, then remembered)."""
    from vmcrash.host import aio
    from vmcrash.host.connection import Hypervisor
    from vmcrash.lab.daemons import LibvirtDaemons
    from vmcrash.lab.guest import best_accel
    from vmcrash.lab.image import build_image

    with LibvirtDaemons():
        aio.event_loop()
        with Hypervisor() as hv:
            accel = best_accel(hv, build_image())
    click.echo(json.dumps({"accel": accel}) if as_json else
               f"acceleration: {accel} ({'KVM' if accel == 'kvm' else 'TCG, software emulation'})")


@lab.command("boot")
@click.option("--memory", "memory_mib", type=click.IntRange(128, 65536), default=512, show_default=True,
              help="Guest memory in MiB.")
@click.option("--vcpus", type=click.IntRange(1, 64), default=1, show_default=True)
@fill_mib_option("MiB of random data written to guest RAM before ready.")
@click.option("--panic-model", type=click.Choice(["isa", "pci", "none"]), default="isa", show_default=True)
@click.option("--rtc", type=click.Choice(["host", "guest"]), default="host", show_default=True,
              help="host: RTC follows host time; guest: RTC stops while the guest is frozen.")
@click.option("--vmcoreinfo/--no-vmcoreinfo", default=True, show_default=True)
@click.option("--agent/--no-agent", default=True, show_default=True)
@click.option("--serial", "serial_path", type=click.Path(dir_okay=False), default=None,
              help="Console log file (default under /var/lib/vmcrash/lab/run).")
@click.option("--crash", is_flag=True, help="Panic the guest once it is ready.")
@click.option("--keep", is_flag=True, help="Leave the domain defined (and running) afterwards.")
@click.option("--on-crash", default="preserve", show_default=True, help="libvirt <on_crash> action.")
@click.option("--name", default=None, help="Domain name (default: unique vmcrash-lab-...).")
@click.option("--json", "as_json", is_flag=True)
def boot(memory_mib: int, vcpus: int, fill_mib: int, panic_model: str, rtc: str, vmcoreinfo: bool,
         agent: bool, serial_path: str | None, crash: bool, keep: bool, on_crash: str, name: str | None,
         as_json: bool) -> int:
    """Boot one lab guest, optionally crash it, report, and (unless --keep) destroy it."""
    from pathlib import Path

    from vmcrash.host import aio
    from vmcrash.host.connection import Hypervisor
    from vmcrash.lab.daemons import LibvirtDaemons
    from vmcrash.lab.guest import PANIC_LINE, GuestSpec, LabGuest, unique_name

    spec = GuestSpec(memory_mib=memory_mib, vcpus=vcpus, fill_mib=fill_mib, panic_model=panic_model,  # type: ignore[arg-type]
                     rtc=rtc, vmcoreinfo=vmcoreinfo, agent=agent, on_crash=on_crash)  # type: ignore[arg-type]
    result: dict[str, Any] = {}
    daemons = LibvirtDaemons()
    daemons.start()
    aio.event_loop()
    hv = Hypervisor()
    guest = LabGuest(spec, hv=hv, name=name or unique_name(), keep_serial=True)
    if serial_path:
        guest.serial_path = Path(serial_path).absolute()
    try:
        result["domain"] = guest.name
        result["serial"] = str(guest.serial_path)
        result["ready_s"] = round(guest.boot(), 2)
        result["accel"] = guest.accel
        if crash:
            guest.crash()
            guest.wait_state("crashed", 60)
            guest.wait_serial(PANIC_LINE, 30)
            time.sleep(0.5)
            lines = [ln for ln in guest.serial_text().splitlines() if PANIC_LINE in ln]
            result["state"] = guest.state()[0]
            result["panic_line"] = lines[0].strip() if lines else None
        else:
            result["state"] = guest.state()[0]
    finally:
        if not keep:
            guest.cleanup()
        else:
            hv.close()
        if not keep:
            daemons.stop()
    result["kept"] = keep
    if as_json:
        click.echo(json.dumps(result, indent=2))
    else:
        for key, value in result.items():
            click.echo(f"{key:>11}: {value}")
    return EXIT_OK if (not crash or result.get("panic_line")) else EXIT_FINDINGS


@lab.command("clean")
@click.option("--all", "everything", is_flag=True, help="Remove every vmcrash-lab-* domain, not just stale ones.")
def clean(everything: bool) -> None:
    """Destroy and undefine lab domains left behind (by dead processes, or all with --all)."""
    from vmcrash.config import LAB_PREFIX
    from vmcrash.host.connection import Hypervisor
    from vmcrash.lab.guest import destroy_and_undefine, sweep_stale

    with Hypervisor() as hv:
        removed = sweep_stale(hv)
        if everything:
            for dom in hv.domains():
                if dom.name().startswith(LAB_PREFIX):
                    destroy_and_undefine(dom)
                    removed.append(dom.name())
    click.echo(f"removed {len(removed)} domain(s)" + (": " + ", ".join(removed) if removed else ""))
