"""Condition*= and Assert*= as systemd 252 evaluates them, where the tree or the machine can tell (pure logic).

Literal fixtures: unit texts with the conditions Debian 12's own units carry (systemd-timesyncd,
systemd-time-wait-sync, chrony, ldconfig, systemd-binfmt...), trees in memory or on disk, and
machines as literal :class:`Machine` facts. The real-boot test (test_guest_boot_proof.py)
compares the same evaluation with systemd's own ConditionResult on booted guests.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
from _guestsys import ETC, LIB, source, system, write_tree

from vmcrash.guest.audit import audit_graph, load_graph
from vmcrash.guest.conditions import OFFLINE, Machine, evaluate_conditions, probe_machine, unit_conditions
from vmcrash.guest.sources import File, Link, MemorySource, RootSource
from vmcrash.guest.units import UnitLoader

#: A KVM guest's facts as the running system shows them.
KVM = Machine(live=True, virtualization="kvm", user_namespace=False, kernel_cmdline="console=ttyS0 quiet",
              capability_bounding=(1 << 41) - 1, hostname="web1", architecture="x86-64",
              security=frozenset({"apparmor"}), security_known=frozenset({"apparmor", "selinux", "ima"}),
              ac_power=True, firmware=frozenset(), first_boot=False, cgroup_v2=True,
              mounts=frozenset({"/", "/proc", "/sys", "/run", "/boot"}), read_only=frozenset({"/sys"}))
DOCKER = Machine(live=True, virtualization="docker", capability_bounding=0xA80425FB,  # docker's default set
                 mounts=frozenset({"/"}), read_only=frozenset())


def met(conditions: str, files: dict[str, str | bytes | File | Link] | None = None, machine: Machine = OFFLINE,
        prefix: str = "Condition") -> bool | None:
    """Evaluate a [Unit] section of ``conditions`` lines for a unit x.service in a small tree."""
    unit_text = f"[Unit]\n{conditions}\n[Service]\nExecStart=/x\n"
    tree: dict[str, str | bytes | File | Link] = {f"{LIB}/x.service": unit_text}
    tree.update(files or {})
    src = MemorySource(tree)
    unit = UnitLoader(src).load("x.service")
    if prefix == "Assert":
        return unit_conditions(unit, src, machine).asserts.met
    return evaluate_conditions(unit, src, machine).met


# -- how conditions combine ----------------------------------------------------------------------


def test_regular_conditions_all_hold_triggering_ones_any() -> None:
    files = {"/etc/a": "1", "/etc/b": "2"}
    assert met("ConditionPathExists=/etc/a\nConditionPathExists=/etc/b", files) is True
    assert met("ConditionPathExists=/etc/a\nConditionPathExists=/etc/none", files) is False
    assert met("ConditionPathExists=|/etc/none\nConditionPathExists=|/etc/a", files) is True
    assert met("ConditionPathExists=|/etc/none\nConditionPathExists=|/etc/nix", files) is False
    # a regular condition must hold whatever the triggering ones say
    assert met("ConditionPathExists=|/etc/a\nConditionPathExists=/etc/none", files) is False


def test_negation_and_the_pipe_first_then_the_bang() -> None:
    files = {"/etc/a": "1"}
    assert met("ConditionPathExists=!/etc/a", files) is False
    assert met("ConditionPathExists=!/etc/none", files) is True
    assert met("ConditionPathExists=|!/etc/a\nConditionPathExists=|!/etc/none", files) is True


def test_an_empty_assignment_resets_every_condition_before_it() -> None:
    assert met("ConditionPathExists=/etc/none\nConditionFirstBoot=yes\nConditionPathExists=") is True
    # conditions and assertions are separate lists
    assert met("AssertPathExists=/etc/none\nConditionPathExists=", prefix="Assert") is False


def test_what_systemd_ignores_is_ignored() -> None:
    assert met("ConditionPathExists=etc/relative") is True  # not absolute: the assignment is dropped
    assert met("ConditionNoSuchThing=yes") is True  # an unknown key is dropped


def test_an_error_is_false_even_when_negated() -> None:
    # systemd: an unknown capability name makes the test fail with an error, which counts as false
    assert met("ConditionCapability=CAP_NO_SUCH", machine=KVM) is False
    assert met("ConditionCapability=!CAP_NO_SUCH", machine=KVM) is False
    assert met("ConditionFirstBoot=maybe") is False


def test_unknown_only_when_nothing_known_decides() -> None:
    assert met("ConditionVirtualization=!container") is None  # offline: the machine is not known
    assert met("ConditionVirtualization=!container\nConditionPathExists=/etc/none") is False
    assert met("ConditionVirtualization=|vm\nConditionPathExists=|/etc/a", {"/etc/a": "1"}) is True
    assert met("ConditionVirtualization=|vm\nConditionPathExists=|/etc/none") is None


def test_whitespace_after_pipe_and_bang_counts_for_strings_only() -> None:
    assert met("ConditionVirtualization=| ! container", machine=KVM) is True
    assert met("ConditionVirtualization=| ! container", machine=DOCKER) is False


# -- the tree's own files ------------------------------------------------------------------------


def test_path_conditions_on_the_tree() -> None:
    files: dict[str, str | bytes | File | Link] = {
        "/etc/rc.local": File("#!/bin/sh\n", 0o755), "/etc/plain": "x", "/etc/empty": "",
        "/etc/link": Link("/etc/plain"), "/var/lib/extensions/.hidden": "x", "/var/lib/repart.d/a.conf~": "x",
        "/usr/lib/binfmt.d/x.conf": "x",
    }
    assert met("ConditionFileIsExecutable=/etc/rc.local", files) is True
    assert met("ConditionFileIsExecutable=/etc/plain", files) is False
    assert met("ConditionFileNotEmpty=/etc/plain", files) is True
    assert met("ConditionFileNotEmpty=/etc/empty", files) is False
    assert met("ConditionFileNotEmpty=/etc/link", files) is True  # stat() follows the link
    assert met("ConditionPathIsSymbolicLink=/etc/link", files) is True
    assert met("ConditionPathIsSymbolicLink=/etc/plain", files) is False
    assert met("ConditionPathIsDirectory=/etc", files) is True
    # hidden and backup files do not make a directory "not empty" (systemd's hidden_or_backup_file)
    assert met("ConditionDirectoryNotEmpty=/var/lib/extensions", files) is False
    assert met("ConditionDirectoryNotEmpty=/var/lib/repart.d", files) is False
    assert met("ConditionDirectoryNotEmpty=/usr/lib/binfmt.d", files) is True
    assert met("ConditionDirectoryNotEmpty=/etc/plain", files) is False
    assert met("ConditionPathExistsGlob=/usr/lib/binfmt.d/*.conf", files) is True
    assert met("ConditionPathExistsGlob=/usr/lib/*/x.conf", files) is True
    assert met("ConditionPathExistsGlob=/usr/lib/binfmt.d/*.rules", files) is False


def test_paths_made_at_boot_are_unknown_offline_and_read_on_the_running_system() -> None:
    files: dict[str, str | bytes | File | Link] = {"/dev/tty0": "", "/var/run": Link("/run")}
    assert met("ConditionPathExists=/dev/tty0", files) is None  # an image's /dev is not the booted one
    assert met("ConditionPathExists=!/var/run/plymouth/pid", files) is None  # /var/run -> /run
    assert met("ConditionPathExists=/dev/tty0", files, KVM) is True
    assert met("ConditionPathExists=/sys/kernel/config", files, KVM) is False


def test_specifiers_are_expanded_and_a_machine_one_is_unknown_offline() -> None:
    tree = {f"{LIB}/db@.service": "[Unit]\nConditionPathExists=!/etc/mysql/my%I.cnf\n[Service]\nExecStart=/x\n",
            f"{LIB}/mods.service": "[Unit]\nConditionFileNotEmpty=/lib/modules/%v/modules.devname\n"
                                   "[Service]\nExecStart=/x\n",
            "/etc/mysql/mytwo.cnf": "x"}
    src = MemorySource(tree)
    loader = UnitLoader(src)
    assert evaluate_conditions(loader.load("db@one.service"), src).met is True
    assert evaluate_conditions(loader.load("db@two.service"), src).met is False
    assert evaluate_conditions(loader.load("mods.service"), src).met is None


def test_first_boot_offline_from_machine_id_as_pid1_decides_it() -> None:
    cond = "ConditionFirstBoot=yes"
    assert met(cond) is True  # no /etc/machine-id
    assert met(cond, {"/etc/machine-id": "uninitialized\n"}) is True
    assert met(cond, {"/etc/machine-id": "5ca1ab1e0ddba11c10c0ffee5eed0001\n"}) is False
    assert met(cond, {"/etc/machine-id": ""}) is False  # systemd 252: an empty file is not a first boot
    assert met("ConditionFirstBoot=no", {"/etc/machine-id": "5ca1ab1e0ddba11c10c0ffee5eed0001\n"}) is True
    assert met(cond, machine=KVM) is False  # live: /run/systemd/first-boot, read by the probe


def test_host_by_name_glob_or_machine_id() -> None:
    files = {"/etc/hostname": "Web1\n", "/etc/machine-id": "5ca1ab1e0ddba11c10c0ffee5eed0001\n"}
    assert met("ConditionHost=web*", files) is True  # case-insensitive glob
    assert met("ConditionHost=db*", files) is False
    assert met("ConditionHost=5ca1ab1e0ddba11c10c0ffee5eed0001", files) is True
    assert met("ConditionHost=5ca1ab1e-0ddb-a11c-10c0-ffee5eed0002", files) is False
    assert met("ConditionHost=web*") is None  # no /etc/hostname offline
    assert met("ConditionHost=db1", machine=KVM) is False


def test_user_and_group_of_the_system_manager() -> None:
    for value, expected in (("root", True), ("0", True), ("@system", True), ("www-data", False), ("33", False)):
        assert met(f"ConditionUser={value}") is expected, value
    assert met("ConditionGroup=root") is True and met("ConditionGroup=adm") is False


# -- the running machine ------------------------------------------------------------------------


def test_virtualization_by_category_id_and_boolean() -> None:
    for value, kvm, docker in (("vm", True, False), ("container", False, True), ("kvm", True, False),
                               ("yes", True, True), ("no", False, False), ("!container", True, False),
                               ("qemu", False, False), ("private-users", False, None)):
        assert met(f"ConditionVirtualization={value}", machine=KVM) is kvm, value
        assert met(f"ConditionVirtualization={value}", machine=DOCKER) is docker, value
    assert met("ConditionVirtualization=vm", machine=Machine(live=True, virtualization="none")) is False


def test_kernel_command_line_word_or_word_with_value() -> None:
    m = Machine(live=True, kernel_cmdline='console=ttyS0 modules-load=virtio "x=a b" ro\n')
    assert met("ConditionKernelCommandLine=|modules-load", machine=m) is True
    assert met("ConditionKernelCommandLine=console=ttyS0", machine=m) is True
    assert met("ConditionKernelCommandLine=console", machine=m) is True
    assert met("ConditionKernelCommandLine=console=tty0", machine=m) is False
    assert met("ConditionKernelCommandLine=x=a b", machine=m) is True  # quotes removed
    assert met("ConditionKernelCommandLine=rd.modules-load", machine=m) is False
    assert met("ConditionKernelCommandLine=console") is None


def test_capability_from_pid1s_bounding_set() -> None:
    assert met("ConditionCapability=CAP_SYS_TIME", machine=KVM) is True
    assert met("ConditionCapability=CAP_SYS_TIME", machine=DOCKER) is False  # not in docker's default set
    assert met("ConditionCapability=CAP_NET_ADMIN", machine=DOCKER) is False
    assert met("ConditionCapability=CAP_CHOWN", machine=DOCKER) is True
    assert met("ConditionCapability=CAP_SYS_TIME") is None


def test_security_acpower_mounts_read_write_cgroups() -> None:
    assert met("ConditionSecurity=apparmor", machine=KVM) is True
    assert met("ConditionSecurity=selinux", machine=KVM) is False
    assert met("ConditionSecurity=audit", machine=KVM) is None  # not read by the probe
    assert met("ConditionSecurity=nonsense", machine=KVM) is False
    assert met("ConditionACPower=true", machine=KVM) is True and met("ConditionACPower=true") is None
    assert met("ConditionPathIsMountPoint=/boot", {"/boot/x": "1"}, KVM) is True
    assert met("ConditionPathIsMountPoint=/etc/machine-id", {"/etc/machine-id": "x"}, KVM) is False
    assert met("ConditionPathIsMountPoint=/etc/machine-id", {"/etc/machine-id": "x"}) is None
    assert met("ConditionPathIsReadWrite=/sys", machine=KVM) is False
    assert met("ConditionPathIsReadWrite=/etc", {"/etc/x": "1"}, KVM) is True
    assert met("ConditionPathIsReadWrite=!/", machine=KVM) is False
    assert met("ConditionPathIsReadWrite=/etc", {"/etc/x": "1"}) is None
    assert met("ConditionControlGroupController=v2", machine=KVM) is True
    assert met("ConditionControlGroupController=cpu", machine=KVM) is None


def test_needs_update_compares_usr_with_the_stamp_on_the_running_system(tmp_path: Path) -> None:
    write_tree(tmp_path, {f"{LIB}/ldconfig.service": "[Unit]\nConditionNeedsUpdate=|/etc\n[Service]\nExecStart=/x\n",
                          "/etc/.updated": "# written by systemd-update-done\nTIMESTAMP_NSEC=0\n", "/usr/bin/x": "1"})
    src = RootSource(tmp_path)
    unit = UnitLoader(src).load("ldconfig.service")
    os.utime(tmp_path / "usr", ns=(0, 2_000_000_000_000_000_000))
    os.utime(tmp_path / "etc/.updated", ns=(0, 1_000_000_000_000_000_000))
    live = Machine(live=True, kernel_cmdline="ro", mounts=frozenset({"/"}), read_only=frozenset())
    assert evaluate_conditions(unit, src, live).met is True  # /usr is newer: the update tools run
    os.utime(tmp_path / "etc/.updated", ns=(0, 3_000_000_000_000_000_000))
    assert evaluate_conditions(unit, src, live).met is False
    on_cmdline = Machine(live=True, kernel_cmdline="systemd.condition-needs-update=1", mounts=frozenset({"/"}),
                         read_only=frozenset())
    assert evaluate_conditions(unit, src, on_cmdline).met is True
    ro = Machine(live=True, kernel_cmdline="ro", mounts=frozenset({"/"}), read_only=frozenset({"/"}))
    os.utime(tmp_path / "etc/.updated", ns=(0, 1_000_000_000_000_000_000))
    assert evaluate_conditions(unit, src, ro).met is False  # a read-only /etc is never updated
    assert evaluate_conditions(unit, src, OFFLINE).met is None


def test_probe_reads_the_running_systems_facts(tmp_path: Path) -> None:
    facts = {
        "proc/1/status": "Name:\tsystemd\nCapBnd:\t000001ffffffffff\n",
        "proc/cmdline": "console=ttyS0 panic=-1\n",
        "proc/sys/kernel/hostname": "vmcrash-guest\n",
        "proc/self/mountinfo": ("22 1 254:0 / / rw,relatime shared:1 - ext4 /dev/vda rw\n"
                                "23 22 0:21 / /sys ro,nosuid shared:2 - sysfs sysfs rw\n"
                                "24 22 0:5 / /mnt/with\\040space rw - tmpfs tmpfs rw\n"),
        "sys/module/apparmor/parameters/enabled": "Y\n",
        "sys/fs/cgroup/cgroup.controllers": "cpu io memory\n",
        "sys/class/power_supply/BAT0/type": "Battery\n", "sys/class/power_supply/BAT0/status": "Discharging\n",
        "run/systemd/first-boot": "",
    }
    for path, text in facts.items():
        (tmp_path / path).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / path).write_text(text)
    (tmp_path / "sys/kernel/security/ima").mkdir(parents=True)
    calls = []

    def detect(*args: str) -> str | None:
        calls.append(args)
        return "no" if args else "qemu"

    m = probe_machine(tmp_path, detect)
    assert m.live and m.virtualization == "qemu" and m.user_namespace is False
    assert m.capability_bounding == (1 << 41) - 1
    assert m.kernel_cmdline == "console=ttyS0 panic=-1\n" and m.hostname == "vmcrash-guest"
    assert m.mounts == {"/", "/sys", "/mnt/with space"} and m.read_only == {"/sys"}
    assert m.security == {"apparmor", "ima"} and "selinux" in m.security_known
    assert m.ac_power is False and m.first_boot is True and m.cgroup_v2 is True
    assert m.firmware == frozenset()
    assert sorted(calls) == [(), ("--private-users",)]


def test_a_probe_of_a_bare_directory_knows_little_and_never_raises(tmp_path: Path) -> None:
    m = probe_machine(tmp_path, lambda *a: None)
    assert m.virtualization is None and m.capability_bounding is None and m.kernel_cmdline is None
    assert m.mounts is None and m.ac_power is True  # no power supply at all: systemd says AC


# -- what they change in the audit ----------------------------------------------------------------

TIME_WAIT_SYNC = ("[Unit]\nConditionCapability=CAP_SYS_TIME\nConditionVirtualization=!container\n"
                  "DefaultDependencies=no\nBefore=time-sync.target shutdown.target\nWants=time-sync.target\n"
                  "Conflicts=shutdown.target\n[Service]\nType=oneshot\nExecStart=/lib/systemd/systemd-time-wait-sync\n"
                  "TimeoutStartSec=90\nRemainAfterExit=yes\n")
ENABLED = Link(f"{LIB}/systemd-time-wait-sync.service")


def _report(files: dict[str, str | bytes | Link], machine: Machine = OFFLINE) -> object:
    src = source(files)
    return audit_graph(load_graph("/", src), src, machine=machine)


def test_a_wait_unit_whose_conditions_only_the_machine_knows_holds_and_the_audit_says_on_what() -> None:
    files = system({f"{LIB}/systemd-time-wait-sync.service": TIME_WAIT_SYNC,
                    f"{ETC}/sysinit.target.wants/systemd-time-wait-sync.service": ENABLED})
    report = _report(files)
    assert report.time_sync_held_by == ("systemd-time-wait-sync.service",)  # type: ignore[attr-defined]
    (wait,) = [c for c in report.clock_units if c.unit == "systemd-time-wait-sync.service"]  # type: ignore[attr-defined]
    assert wait.runs is None and "holds it only if ConditionCapability=CAP_SYS_TIME" in wait.note
    assert "ConditionVirtualization=!container" in wait.note and "not known here" in wait.note
    text = report.render_text()  # type: ignore[attr-defined]
    assert "conditions not known offline" in text and "systemd-time-wait-sync.service: ConditionCapability" in text
    doc = report.to_json()  # type: ignore[attr-defined]
    assert doc["machine"] == "offline"
    assert {"unit": "systemd-time-wait-sync.service", "runs": None, "condition": None, "assert": True,
            "why": ["ConditionCapability=CAP_SYS_TIME", "ConditionVirtualization=!container"]} in doc["conditions"]
    json.dumps(doc)
    # in a container the same unit is skipped: it holds nothing
    inside = _report(files, DOCKER)
    assert inside.time_sync_held_by == ()  # type: ignore[attr-defined]
    assert "time-sync-not-held" in {f.code for f in inside.findings}  # type: ignore[attr-defined]
    (wait,) = [c for c in inside.clock_units if c.unit == "systemd-time-wait-sync.service"]  # type: ignore[attr-defined]
    assert wait.runs is False and wait.note.startswith("skipped at boot: ConditionCapability=CAP_SYS_TIME")
    assert _report(files, KVM).time_sync_held_by == ("systemd-time-wait-sync.service",)  # type: ignore[attr-defined]


def test_a_service_skipped_by_its_condition_never_starts_on_a_wrong_clock() -> None:
    files = system()
    files[f"{LIB}/web.service"] = ("[Unit]\nConditionPathExists=/etc/web-enabled\n[Service]\nExecStart=/usr/bin/web\n"
                                   "[Install]\nWantedBy=multi-user.target\n")
    report = _report(files)
    (web,) = [s for s in report.services if s.unit == "web.service"]  # type: ignore[attr-defined]
    assert web.runs is False and not web.after_time_sync
    assert "skipped at boot: ConditionPathExists=/etc/web-enabled false" in web.note
    assert ("service-before-time-sync", "web.service") not in {(f.code, f.unit) for f in report.findings}  # type: ignore[attr-defined]
    assert ("service-before-time-sync", "db.service") in {(f.code, f.unit) for f in report.findings}  # type: ignore[attr-defined]
    assert "--    web.service" in report.render_text()  # type: ignore[attr-defined]
    files["/etc/web-enabled"] = ""
    report = _report(files)
    assert ("service-before-time-sync", "web.service") in {(f.code, f.unit) for f in report.findings}  # type: ignore[attr-defined]


def test_an_assertion_that_fails_fails_the_units_that_require_it_not_those_that_want_it() -> None:
    files = system(services=("web", "db", "cache"))
    files[f"{LIB}/setup.service"] = "[Unit]\nAssertPathExists=/etc/setup.conf\n[Service]\nExecStart=/x\n"
    files[f"{LIB}/web.service"] = ("[Unit]\nRequires=setup.service\nAfter=setup.service\n[Service]\nExecStart=/w\n"
                                   "[Install]\nWantedBy=multi-user.target\n")
    files[f"{LIB}/cache.service"] = ("[Unit]\nWants=setup.service\n[Service]\nExecStart=/c\n"
                                     "[Install]\nWantedBy=multi-user.target\n")
    report = _report(files)
    verdicts = {s.unit: s for s in report.services}  # type: ignore[attr-defined]
    assert verdicts["web.service"].runs is False
    assert "requires setup.service, which fails" in verdicts["web.service"].note
    assert verdicts["cache.service"].runs is True
    codes = {(f.code, f.unit) for f in report.findings}  # type: ignore[attr-defined]
    assert ("service-before-time-sync", "web.service") not in codes
    assert ("service-before-time-sync", "cache.service") in codes
    # a skipped unit (condition, not assertion) fails nobody
    files[f"{LIB}/setup.service"] = "[Unit]\nConditionPathExists=/etc/setup.conf\n[Service]\nExecStart=/x\n"
    report = _report(files)
    assert {s.unit: s.runs for s in report.services}["web.service"] is True  # type: ignore[attr-defined]


def test_the_time_daemon_report_says_when_its_conditions_decide() -> None:
    files = system()  # Debian 12's chrony.service carries ConditionCapability=CAP_SYS_TIME
    offline = _report(files)
    assert offline.daemons[0].summary[0] == "runs only if ConditionCapability=CAP_SYS_TIME (not known here)"  # type: ignore[attr-defined]
    assert _report(files, DOCKER).daemons[0].summary[0].startswith("skipped at boot")  # type: ignore[attr-defined]
    assert _report(files, KVM).daemons[0].summary[0].startswith("configuration:")  # type: ignore[attr-defined]


#: Condition lines Debian 12's own units carry (grep of the debootstrapped root), and what each says
#: for a unit alone in an empty tree: offline, and on the KVM machine above.
DEBIAN_LINES = (
    ("ConditionVirtualization=!container", None, True),
    ("ConditionPathExists=!/etc/initrd-release", True, True),
    ("ConditionCapability=CAP_SYS_ADMIN", None, True),
    ("ConditionPathIsReadWrite=/sys", None, False),  # the empty tree has no /sys
    ("ConditionSecurity=tpm2", None, None),
    ("ConditionACPower=true", None, True),
    ("ConditionVirtualization=!private-users", None, True),
    ("ConditionFirstBoot=yes", True, False),  # offline: no /etc/machine-id is a first boot
    ("ConditionPathIsSymbolicLink=|/system-update", False, False),
    ("ConditionPathIsReadWrite=!/", None, False),
    ("ConditionPathIsMountPoint=/proc/sys/fs/binfmt_misc", None, False),
    ("ConditionNeedsUpdate=|/etc", None, True),  # no /etc/.updated: update
    ("ConditionKernelCommandLine=|rd.modules-load", None, False),
    ("ConditionFileNotEmpty=/lib/modules/%v/modules.devname", None, False),
    ("ConditionFileIsExecutable=/etc/rc.local", False, False),
    ("ConditionDirectoryNotEmpty=|/run/binfmt.d", None, False),
    ("ConditionSecurity=audit", None, None),
    ("ConditionVirtualization=!lxc", None, True),
    ("AssertPathExists=/etc/initrd-release", False, False),
)


@pytest.mark.parametrize(("line", "offline", "kvm"), DEBIAN_LINES, ids=[line for line, *_ in DEBIAN_LINES])
def test_debian_12_condition_lines(line: str, offline: bool | None, kvm: bool | None) -> None:
    tree: dict[str, str | bytes | File | Link] = {f"{LIB}/u.service": f"[Unit]\n{line}\n[Service]\nExecStart=/x\n"}
    src = MemorySource(tree)
    unit = UnitLoader(src).load("u.service")
    assert unit_conditions(unit, src, OFFLINE).runs is offline
    assert unit_conditions(unit, src, KVM).runs is kvm


def test_an_assertion_failure_travels_down_a_long_requires_chain_in_linear_time() -> None:
    """A hostile tree: 1500 services each requiring the next (deeper than Python's recursion limit), the
    last one asserting what is false: every one of them fails, and neither the graph nor the audit recurses."""
    import time

    n = 1500
    files = system(services=())
    for i in range(n):
        dep = f"Requires=s{i + 1}.service\nAfter=s{i + 1}.service\n" if i + 1 < n else "AssertPathExists=/nope\n"
        files[f"{LIB}/s{i}.service"] = f"[Unit]\n{dep}[Service]\nExecStart=/x\n[Install]\nWantedBy=multi-user.target\n"
    files[f"{ETC}/multi-user.target.wants/s0.service"] = Link(f"{LIB}/s0.service")
    src = source(files)
    graph = load_graph("/", src)
    t0 = time.monotonic()
    report = audit_graph(graph, src)
    assert time.monotonic() - t0 < 30
    runs = {s.unit: s.runs for s in report.services}
    assert runs["s0.service"] is False and runs[f"s{n - 1}.service"] is False
    assert "requires s1.service, which fails" in next(s.note for s in report.services if s.unit == "s0.service")
