"""``vmcrash doctor``: is each domain ready for vmcrash? ``--fix`` changes its XML (next boot)."""

from __future__ import annotations

from typing import Any

import click

from vmcrash.cli._common import config_of, echo_json, fmt_bytes
from vmcrash.errors import EXIT_FINDINGS, EXIT_OK

__all__ = ["doctor"]


@click.command("doctor")
@click.argument("domains", nargs=-1)
@click.option("--fix", is_flag=True, help="Apply the XML changes (they take effect at the next boot).")
@click.option("--memfd", is_flag=True,
              help="With --fix: move guest RAM to a shared memfd (capture mode hold); prints the trade-offs.")
@click.option("--json", "as_json", is_flag=True)
@click.option("--guest-audit", is_flag=True,
              help="Also audit each running guest's boot order through its agent (vmcrash guest audit --domain).")
@click.pass_context
def doctor(ctx: click.Context, domains: tuple[str, ...], fix: bool, as_json: bool, memfd: bool = False,
           guest_audit: bool = False) -> int:
    """Check DOMAINS (default: all watched) for panic device, vmcoreinfo, agent, on_crash and dump space."""
    import libvirt

    from vmcrash.capture import retention
    from vmcrash.capture.daemon_lock import HypervisorLock, resolve_hypervisor_key
    from vmcrash.capture.hold import MEMFD_TRADEOFFS, capture_plan, shmem_thp_setting, with_memfd_backing
    from vmcrash.host.connection import Hypervisor, call
    from vmcrash.host.crash_owner import decide, freeze_explanation
    from vmcrash.host.domxml import apply_fixes, memory_bytes, readiness

    cfg = config_of(ctx)
    key = resolve_hypervisor_key(cfg.libvirt_uri)
    holder = HypervisorLock(cfg.run_dir, key).holder()
    daemon = {"hypervisor": key, "held": holder is not None,
              "holder": holder.to_dict() if holder is not None else None,
              "detail": f"watched by {holder.describe()}" if holder is not None else
                        "no vmcrash daemon holds this hypervisor: panics are not handled now"}
    hv = Hypervisor(cfg.libvirt_uri)
    doms = [hv.lookup(d) for d in domains] if domains else [
        d for d in hv.domains() if cfg.watches(d.name())]
    report: list[dict[str, Any]] = []
    all_ok = True
    for dom in doms:
        name = dom.name()
        xml = call(dom.XMLDesc, libvirt.VIR_DOMAIN_XML_INACTIVE, domain=name)
        checks = readiness(xml)
        mem = memory_bytes(xml)
        try:
            free = retention.disk_free_bytes(cfg.dump_dir if cfg.dump_dir.exists() else cfg.dump_dir.parent)
        except Exception:
            free = 0
        need = retention.estimate_dump_bytes(mem, cfg.policy_for(name).format) + cfg.min_free_bytes
        space_ok = free >= need
        entry: dict[str, Any] = {
            "domain": name,
            "watched": cfg.watches(name),
            "daemon": daemon,
            "checks": [{"name": c.name, "ok": c.ok, "detail": c.detail} for c in checks] + [
                {"name": "dump-space", "ok": space_ok,
                 "detail": f"{fmt_bytes(free)} free in {cfg.dump_dir}, a dump needs up to {fmt_bytes(need)} "
                           f"(incl. {cfg.min_free_mib} MiB reserve)"}],
        }
        if fix and not all(c.ok for c in checks):
            if not call(dom.isPersistent, domain=name):
                entry["fix"] = {"applied": False, "reason": "transient domain: cannot redefine"}
            else:
                new_xml, changes = apply_fixes(xml)
                call(hv.conn.defineXML, new_xml, domain=name)
                entry["fix"] = {"applied": True, "changes": changes,
                                "note": "takes effect at the next boot of the domain (a fresh start, "
                                        "not a reboot inside the guest)" if call(dom.isActive) else
                                        "takes effect when the domain starts"}
                checks = readiness(call(dom.XMLDesc, libvirt.VIR_DOMAIN_XML_INACTIVE, domain=name))
                entry["checks"] = [{"name": c.name, "ok": c.ok, "detail": c.detail} for c in checks] + \
                    entry["checks"][-1:]
        # who owns a crash now: the live action (what libvirt applies to the running QEMU)
        own = decide(call(dom.XMLDesc, 0, domain=name), takeover=cfg.policy_for(name).crash_owner == "vmcrash")
        entry["crash_owner"] = {"owner": own.owner.value, "on_crash": own.on_crash.value, "memory_bytes": mem,
                                "plan": own.plan(), "freeze": freeze_explanation(own, mem)}
        pol = cfg.policy_for(name)
        backing, mode, why = capture_plan(call(dom.XMLDesc, libvirt.VIR_DOMAIN_XML_INACTIVE, domain=name),
                                          pol.capture, pol.recovery, cfg.staging.mode)
        entry["memory"] = {"backing": backing, "capture": mode, "requested": pol.capture, "reason": why}
        entry["checks"].append({"name": "capture", "ok": True,
                                "detail": f"RAM {backing}: capture {mode} ({why})"})
        if fix and memfd:
            cur = call(dom.XMLDesc, libvirt.VIR_DOMAIN_XML_INACTIVE, domain=name)
            new_xml, change = with_memfd_backing(cur)
            if change is None:
                entry["memfd"] = {"applied": False, "reason": f"RAM is {backing} already or uses a file/"
                                                              "hugepage source (add access mode='shared' there)"}
            elif not call(dom.isPersistent, domain=name):
                entry["memfd"] = {"applied": False, "reason": "transient domain: cannot redefine"}
            else:
                call(hv.conn.defineXML, new_xml, domain=name)
                entry["memfd"] = {"applied": True, "change": change + " — at the next start of the domain",
                                  "tradeoffs": [t.format(thp=shmem_thp_setting()) for t in MEMFD_TRADEOFFS]}
        if guest_audit:
            from vmcrash.host.guest_exec import doctor_check

            entry["checks"].append(doctor_check(dom))
        entry["ok"] = all(c["ok"] for c in entry["checks"])
        all_ok = all_ok and entry["ok"]
        report.append(entry)
    hv.close()
    if as_json:
        echo_json(report)
    else:
        click.echo(f"daemon: {daemon['detail']} ({key})")
        if not report:
            click.echo("no domains to check")
        for entry in report:
            click.echo(f"{entry['domain']}: {'ready' if entry['ok'] else 'NOT READY'}")
            for c in entry["checks"]:
                click.echo(f"  {'ok  ' if c['ok'] else 'FAIL'} {c['name']:<14} {c['detail']}")
            co = entry["crash_owner"]
            click.echo(f"  crash owner    {co['owner']}: {co['plan']}")
            click.echo(f"  {'':<14} {co['freeze']}")
            if "memfd" in entry:
                m = entry["memfd"]
                if m["applied"]:
                    click.echo(f"  fixed: {m['change']}")
                    for t in m["tradeoffs"]:
                        click.echo(f"  trade-off: {t}")
                else:
                    click.echo(f"  memfd not applied: {m['reason']}")
            if "fix" in entry:
                f = entry["fix"]
                if f["applied"]:
                    for ch in f["changes"]:
                        click.echo(f"  fixed: {ch}")
                    click.echo(f"  note: {f['note']}")
                else:
                    click.echo(f"  not fixed: {f['reason']}")
    return EXIT_OK if all_ok else EXIT_FINDINGS
