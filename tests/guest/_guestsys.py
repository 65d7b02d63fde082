"""Literal miniature systemd systems for the guest tests (in memory).

The targets are short versions of systemd's own (see BASE); the chrony texts are Debian 12's,
checked and cited below.

These are fakes for *pure logic* tests only; the same code is tested against the real Debian
root built by debootstrap and against systemd itself on a booted guest (test_guest_rootfs.py,
test_guest_boot_proof.py).
"""

from __future__ import annotations

from vmcrash.guest.sources import File, Link, MemorySource

LIB = "/lib/systemd/system"
ETC = "/etc/systemd/system"

#: The targets every test system has: systemd's own target files, checked line by line against
#: systemd 252.39-1~deb12u2 (Debian 12, /lib/systemd/system of the package, apt-get download +
#: dpkg-deb -x) and units/*.target of systemd 249.11 and 255.4 as Ubuntu 22.04/24.04 build them
#: (GitHub pop-os/systemd at the Ubuntu release commits ca6a2b8 and 24f87a1): the same lines in all
#: three but for the order of sysinit.target's (249 has no Before=emergency.*). Kept: Description=,
#: DefaultDependencies=, RefuseManualStart=, the dependency and ordering lines; left out:
#: Documentation=, AllowIsolate=, OnFailure=/OnFailureJobMode=, and basic.target's tmp.mount lines
#: (Wants=/After=tmp.mount, RequiresMountsFor=/var /var/tmp: no tmp.mount unit here). default.target is
#: the package's link to graphical.target. systemd 219 (CentOS 7), 239 (RHEL 8), 257 (Fedora 42) and
#: openSUSE's are NOT checked. systemd-journald.socket is a stand-in (only what its ordering needs).
BASE: dict[str, str | bytes | Link] = {
    f"{LIB}/default.target": Link("graphical.target"),
    f"{LIB}/graphical.target": "[Unit]\nDescription=Graphical Interface\nRequires=multi-user.target\n"
                               "Wants=display-manager.service\nConflicts=rescue.service rescue.target\n"
                               "After=multi-user.target rescue.service rescue.target display-manager.service\n",
    f"{LIB}/multi-user.target": "[Unit]\nDescription=Multi-User System\nRequires=basic.target\n"
                                "Conflicts=rescue.service rescue.target\n"
                                "After=basic.target rescue.service rescue.target\n",
    f"{LIB}/basic.target": "[Unit]\nDescription=Basic System\nRequires=sysinit.target\n"
                           "Wants=sockets.target timers.target paths.target slices.target\n"
                           "After=sysinit.target sockets.target paths.target slices.target\n",
    f"{LIB}/sysinit.target": "[Unit]\nDescription=System Initialization\nWants=local-fs.target swap.target\n"
                             "After=local-fs.target swap.target\nConflicts=emergency.service emergency.target\n"
                             "Before=emergency.service emergency.target\n",
    f"{LIB}/local-fs.target": "[Unit]\nDescription=Local File Systems\nDefaultDependencies=no\n"
                              "Conflicts=shutdown.target\nAfter=local-fs-pre.target\n",
    f"{LIB}/swap.target": "[Unit]\nDescription=Swaps\n",
    f"{LIB}/sockets.target": "[Unit]\nDescription=Socket Units\n",
    f"{LIB}/timers.target": "[Unit]\nDescription=Timer Units\nDefaultDependencies=no\nConflicts=shutdown.target\n",
    f"{LIB}/paths.target": "[Unit]\nDescription=Path Units\n",
    f"{LIB}/slices.target": "[Unit]\nDescription=Slice Units\nWants=-.slice system.slice\n"
                            "After=-.slice system.slice\n",
    f"{LIB}/shutdown.target": "[Unit]\nDescription=System Shutdown\nDefaultDependencies=no\nRefuseManualStart=yes\n",
    f"{LIB}/network-pre.target": "[Unit]\nDescription=Preparation for Network\nRefuseManualStart=yes\n",
    f"{LIB}/network.target": "[Unit]\nDescription=Network\nAfter=network-pre.target\nRefuseManualStart=yes\n",
    f"{LIB}/network-online.target": "[Unit]\nDescription=Network is Online\nAfter=network.target\n",
    f"{LIB}/nss-lookup.target": "[Unit]\nDescription=Host and Network Name Lookups\nRefuseManualStart=yes\n",
    f"{LIB}/time-set.target": "[Unit]\nDescription=System Time Set\nRefuseManualStart=yes\n",
    f"{LIB}/time-sync.target": "[Unit]\nDescription=System Time Synchronized\nRefuseManualStart=yes\n"
                               "After=time-set.target\nWants=time-set.target\n",
    f"{LIB}/systemd-journald.socket": "[Unit]\nDefaultDependencies=no\nBefore=sockets.target\n"
                                      "[Socket]\nListenStream=/run/systemd/journal/stdout\n",
}

#: chrony 4.3-2+deb12u3 (Debian 12): chrony.service, chrony-wait.service and /usr/share/chrony/chrony.conf
#: (installed as /etc/chrony/chrony.conf), checked against the package (apt-get download, dpkg-deb -x); unit
#: texts trimmed to their [Unit] lines, Type=, ExecStart=, the timeout and [Install] (sandboxing left out).
CHRONY = (
    "[Unit]\nDescription=chrony, an NTP client/server\nConflicts=openntpd.service ntp.service ntpsec.service\n"
    "Wants=time-sync.target\nBefore=time-sync.target\nAfter=network.target\nConditionCapability=CAP_SYS_TIME\n"
    "[Service]\nType=forking\nPIDFile=/run/chrony/chronyd.pid\nEnvironmentFile=-/etc/default/chrony\n"
    "ExecStart=!/usr/sbin/chronyd $DAEMON_OPTS\nPrivateTmp=yes\n[Install]\nAlias=chronyd.service\n"
    "WantedBy=multi-user.target\n"
)
CHRONY_WAIT = (
    "[Unit]\nDescription=Wait for chrony to synchronize system clock\nAfter=chronyd.service\nRequires=chronyd.service\n"
    "Before=time-sync.target\nWants=time-sync.target\n[Service]\nType=oneshot\n"
    "ExecStart=/usr/bin/chronyc -h 127.0.0.1,::1 waitsync 0 0.1 0.0 1\nTimeoutStartSec=180\nRemainAfterExit=yes\n"
    "[Install]\nWantedBy=multi-user.target\n"
)
SIMPLE = "[Unit]\nDescription={name}\n[Service]\nExecStart=/usr/bin/{name}\n[Install]\nWantedBy=multi-user.target\n"
CHRONY_CONF = ("confdir /etc/chrony/conf.d\npool 2.debian.pool.ntp.org iburst\nsourcedir /run/chrony-dhcp\n"
               "sourcedir /etc/chrony/sources.d\nkeyfile /etc/chrony/chrony.keys\n"
               "driftfile /var/lib/chrony/chrony.drift\nntsdumpdir /var/lib/chrony\nlogdir /var/log/chrony\n"
               "maxupdateskew 100.0\nrtcsync\nmakestep 1 3\nleapsectz right/UTC\n")


def system(extra: dict[str, str | bytes | Link] | None = None, *, chrony: bool = True,
           services: tuple[str, ...] = ("web", "db")) -> dict[str, str | bytes | Link]:
    """A miniature system: the base targets, chrony enabled (wait unit installed, not enabled), services."""
    files: dict[str, str | bytes | Link] = dict(BASE)
    if chrony:
        files[f"{LIB}/chrony.service"] = CHRONY
        files[f"{LIB}/chrony-wait.service"] = CHRONY_WAIT
        files[f"{ETC}/chronyd.service"] = Link(f"{LIB}/chrony.service")
        files[f"{ETC}/multi-user.target.wants/chrony.service"] = Link(f"{LIB}/chrony.service")
        files["/etc/chrony/chrony.conf"] = CHRONY_CONF
    for name in services:
        files[f"{LIB}/{name}.service"] = SIMPLE.format(name=name)
        files[f"{ETC}/multi-user.target.wants/{name}.service"] = Link(f"{LIB}/{name}.service")
    files.update(extra or {})
    return files


def source(files: dict[str, str | bytes | Link]) -> MemorySource:
    return MemorySource(files)


def write_tree(root: object, files: dict[str, str | bytes | File | Link]) -> None:
    """Materialise ``files`` under the directory ``root`` (a pathlib.Path) for on-disk tests."""
    from pathlib import Path

    base = Path(str(root))
    for path, value in files.items():
        target = base / path.lstrip("/")
        target.parent.mkdir(parents=True, exist_ok=True)
        if isinstance(value, Link):
            target.symlink_to(value.target)
        elif isinstance(value, File):
            target.write_bytes(value.data.encode() if isinstance(value.data, str) else value.data)
            target.chmod(value.mode)
        else:
            target.write_bytes(value.encode() if isinstance(value, str) else value)
