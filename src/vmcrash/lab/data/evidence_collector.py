#!/usr/bin/python3
"""vmcrash lab, in the booted guest: wait for boot and clock sync, record what systemd reports, write it out, power off.

Runs with the guest's own python3 as ``/usr/local/sbin/vmcrash-evidence`` (a test harness, not
product code; :mod:`vmcrash.lab.systemd_guest` installs it). Its settings come from
``/etc/vmcrash-lab.json``; the evidence (one JSON document behind a magic line) goes to the raw
disk ``/dev/vdb``, in slot 0 for the first boot and slot 1 for the boot after a live fix.
"""

import json
import os
import subprocess
import sys
import time

OUT = "/dev/vdb"
MARK = "/var/lib/vmcrash-lab-first-boot-done"
PROPS = ("Id,Names,LoadState,ActiveState,SubState,Type,After,Before,Wants,Requires,WantedBy,"
         "DefaultDependencies,FragmentPath,DropInPaths,UnitFileState,"
         "InactiveExitTimestamp,InactiveExitTimestampMonotonic,ActiveEnterTimestamp,"
         "ActiveEnterTimestampMonotonic,ExecMainStartTimestamp,ExecMainStartTimestampMonotonic,TimeoutStartUSec,"
         "ConditionResult,ConditionTimestampMonotonic,AssertResult,AssertTimestampMonotonic")
ENV = dict(os.environ, LC_ALL="C", SYSTEMD_COLORS="0", SYSTEMD_PAGER="", PYTHONPATH="/opt/vmcrash")


def run(cmd, timeout=180):
    t0 = time.monotonic()
    try:
        p = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=ENV)
        rc, out, err = p.returncode, p.stdout, p.stderr
    except Exception as exc:
        rc, out, err = -1, "", repr(exc)
    return {"cmd": cmd, "rc": rc, "out": out, "err": err[-4000:], "seconds": round(time.monotonic() - t0, 3)}


def say(text):
    print("vmcrash-evidence: " + text, flush=True)


def wait_active(unit, timeout_s):
    """Poll until ``unit`` is active (at most ``timeout_s``); True when it is."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if run(["systemctl", "is-active", "--quiet", unit], timeout=30)["rc"] == 0:
            return True
        time.sleep(0.5)
    return False


def wait_for_sync(lab, ev):
    if not lab.get("reachable", True):
        return
    if lab.get("daemon") == "chrony":
        ev["waitsync"] = run(["chronyc", "-n", "-h", "127.0.0.1", "waitsync", "150", "0.1", "0", "1"], timeout=200)
    elif lab.get("daemon") == "ntpsec":
        ev["waitsync"] = run(["ntpwait", "-n", "200", "-s", "1"], timeout=260)


def journal_entries():
    entries = []
    j = subprocess.run(["journalctl", "-b", "-o", "json", "--no-pager"], capture_output=True, timeout=120, env=ENV)
    for line in j.stdout.splitlines():
        try:
            e = json.loads(line)
        except ValueError:
            continue
        msg = e.get("MESSAGE")
        if not isinstance(msg, str):
            msg = ""
        entries.append([int(e.get("__MONOTONIC_TIMESTAMP", 0)), int(e.get("__REALTIME_TIMESTAMP", 0)),
                        e.get("SYSLOG_IDENTIFIER", ""), e.get("_SYSTEMD_UNIT", ""), msg[:200]])
    return entries


def main():
    ev = {"collector_started_monotonic_us": time.monotonic_ns() // 1000}
    with open("/etc/vmcrash-lab.json") as f:
        lab = json.load(f)
    ev["lab"] = lab
    if lab.get("ntp_gate"):
        # the host holds NTP back until this line: every service of multi-user.target has started
        # (this unit is ordered after it) and time-sync.target has been reached, all on the wrong clock
        ev["time_sync_active_before_gate"] = wait_active("time-sync.target", 300)
        say("open the NTP gate")
    ev["is_system_running"] = run(["systemctl", "is-system-running", "--wait"], timeout=400)
    wait_for_sync(lab, ev)
    if lab.get("daemon") == "chrony":
        ev["tracking"] = run(["chronyc", "-n", "-h", "127.0.0.1", "tracking"])
        ev["sources"] = run(["chronyc", "-n", "-h", "127.0.0.1", "sources"])
    elif lab.get("daemon") == "ntpsec":
        ev["peers"] = run(["ntpq", "-n", "-c", "rv 0 leap,offset,sync_ntp", "-c", "peers"])
    ev["adjtimex_sync_file"] = os.path.exists("/run/systemd/timesync/synchronized")
    units = run(["systemctl", "list-units", "--all", "--plain", "--no-legend", "--full"])
    names = sorted({line.split()[0] for line in units["out"].splitlines() if line.split()})
    ev["list_units"] = units
    ev["show"] = run(["systemctl", "show", "--timestamp=us+utc", "-p", PROPS, "--", *names])
    ev["audit"] = run([sys.executable, "-m", "vmcrash.guest", "audit", "--json"])
    if lab.get("hold_for_host"):
        # the host audits this running guest through its agent now, then creates the flag file
        ev["hold_started_monotonic_us"] = time.monotonic_ns() // 1000
        say("waiting for the host")
        deadline = time.monotonic() + 400
        while not os.path.exists("/run/vmcrash-host-done") and time.monotonic() < deadline:
            time.sleep(0.5)
        ev["host_done"] = os.path.exists("/run/vmcrash-host-done")
        ev["audit_after_host"] = run([sys.executable, "-m", "vmcrash.guest", "audit", "--json"])
    try:
        audited = [s["unit"] for s in json.loads(ev["audit"]["out"])["services"]]
    except (ValueError, KeyError, TypeError):
        audited = []
    # one call for all units (each call costs seconds under TCG); chains start at column 0
    ev["critical_chain_all"] = run(["systemd-analyze", "critical-chain", "--no-pager", *audited]) if audited else None
    ev["critical_chain_default"] = run(["systemd-analyze", "critical-chain", "--no-pager"])
    ev["journal"] = journal_entries()
    ev["collector_done_monotonic_us"] = time.monotonic_ns() // 1000
    second = os.path.exists(MARK)
    reboot = bool(lab.get("live_fix")) and not second
    if reboot:
        # live proof: fix the running system itself (--root /), then reboot into the fixed boot
        ev["live_fix"] = run([sys.executable, "-m", "vmcrash.guest", "fix", "--root", "/", *lab["live_fix"]])
        ev["live_audit"] = run([sys.executable, "-m", "vmcrash.guest", "audit", "--json"])
    data = json.dumps(ev).encode()
    evidence = lab["evidence"]
    with open(OUT, "r+b") as f:
        f.seek(evidence["slot_bytes"] if second else 0)
        f.write(evidence["magic"].encode() + b"%d\n" % len(data) + data)
        f.flush()
        os.fsync(f.fileno())
    say(f"written {len(data)} bytes")
    if reboot:
        open(MARK, "w").close()
        subprocess.run(["systemctl", "reboot", "--no-block"])
    else:
        subprocess.run(["systemctl", "poweroff", "--no-block"])


if __name__ == "__main__":
    main()
