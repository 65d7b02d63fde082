"""Fixture roots of the time-service layouts of each distribution family (issue 12), for pure-logic tests.

The unit files and defaults below are the distributions' own, as shipped by the package named in
each comment (unit texts trimmed to the lines systemd's ordering and the audit read: [Unit]
dependencies, Type=, ExecStart=, EnvironmentFile=, timeouts, [Install]; sandboxing lines left out).
Looked up in the packages' published files (Fedora/CentOS dist-git and src.rpm contents, Debian and
Ubuntu package listings, openSUSE build service); the Debian 12 layouts are also tested on the real
debootstrapped roots (test_guest_rootfs.py, test_guest_bounds_rootfs.py).

Every root has the base targets of systemd (short versions of its own files, see _guestsys.BASE)
under the distribution's unit directory, one application service ordered only after
network.target, and the distribution's time daemon enabled.
"""

from __future__ import annotations

from _guestsys import BASE

from vmcrash.guest.sources import Link

Files = dict[str, str | bytes | Link]

USR_LIB = "/usr/lib/systemd/system"
DEB_LIB = "/lib/systemd/system"
ETC = "/etc/systemd/system"

APP = ("[Unit]\nDescription=the application\nAfter=network.target\n[Service]\nType=simple\n"
       "ExecStart=/opt/app/bin/app\n[Install]\nWantedBy=multi-user.target\n")


def _base(lib: str) -> Files:
    files: Files = {}
    for path, value in BASE.items():
        files[path.replace(DEB_LIB, lib)] = value
    files[f"{lib}/nss-lookup.target"] = "[Unit]\nDescription=Host and Network Name Lookups\n"
    files[f"{lib}/syslog.target"] = "[Unit]\nDescription=Syslog\n"
    files[f"{lib}/app.service"] = APP
    files[f"{ETC}/multi-user.target.wants/app.service"] = Link(f"{lib}/app.service")
    if lib == USR_LIB:
        files["/lib"] = Link("usr/lib")  # RHEL/Fedora/SUSE: /lib is a link to usr/lib
    return files


def _enable(files: Files, lib: str, unit: str, target: str = "multi-user.target") -> None:
    files[f"{ETC}/{target}.wants/{unit}"] = Link(f"{lib}/{unit}")


# -- CentOS 7 (systemd-219-78.el7_9, ntp/ntpdate-4.2.6p5-29.el7.centos.2, chrony-3.4-1.el7) ----------

#: ntp-4.2.6p5-29.el7.centos.2: /usr/lib/systemd/system/ntpd.service
CENTOS7_NTPD = (
    "[Unit]\nDescription=Network Time Service\nAfter=syslog.target ntpdate.service sntp.service\n\n"
    "[Service]\nType=forking\nEnvironmentFile=-/etc/sysconfig/ntpd\nExecStart=/usr/sbin/ntpd -u ntp:ntp $OPTIONS\n"
    "PrivateTmp=true\n\n[Install]\nWantedBy=multi-user.target\n"
)
#: ntpdate-4.2.6p5-29.el7.centos.2: /usr/lib/systemd/system/ntpdate.service
CENTOS7_NTPDATE = (
    "[Unit]\nDescription=Set time via NTP\nAfter=syslog.target network.target nss-lookup.target\n"
    "Before=time-sync.target\nWants=time-sync.target\n\n"
    "[Service]\nType=oneshot\nExecStart=/usr/libexec/ntpdate-wrapper\nRemainAfterExit=yes\n\n"
    "[Install]\nWantedBy=multi-user.target\n"
)
#: chrony-3.4-1.el7: /usr/lib/systemd/system/chronyd.service and chrony-wait.service
CENTOS7_CHRONYD = (
    "[Unit]\nDescription=NTP client/server\nDocumentation=man:chronyd(8) man:chrony.conf(5)\n"
    "After=ntpdate.service sntp.service ntpd.service\nConflicts=ntpd.service systemd-timesyncd.service\n"
    "ConditionCapability=CAP_SYS_TIME\n\n[Service]\nType=forking\nPIDFile=/var/run/chrony/chronyd.pid\n"
    "EnvironmentFile=-/etc/sysconfig/chronyd\nExecStart=/usr/sbin/chronyd $OPTIONS\n"
    "ExecStartPost=/usr/libexec/chrony-helper update-daemon\nPrivateTmp=yes\nProtectHome=yes\n"
    "ProtectSystem=full\n\n[Install]\nWantedBy=multi-user.target\n"
)
CENTOS7_CHRONY_WAIT = (
    "[Unit]\nDescription=Wait for chrony to synchronize system clock\nAfter=chronyd.service\n"
    "Requires=chronyd.service\nBefore=time-sync.target\nWants=time-sync.target\n\n"
    "[Service]\nType=oneshot\n# Wait up to ~10 minutes for chronyd to synchronize and the remaining\n"
    "# clock correction to be less than 0.1 seconds\nExecStart=/usr/bin/chronyc waitsync 600 0.1 0.0 1\n"
    "RemainAfterExit=yes\nStandardOutput=null\n\n[Install]\nWantedBy=multi-user.target\n"
)
#: ntp-4.2.6p5: /etc/ntp.conf (the lines that matter; comments trimmed)
CENTOS7_NTP_CONF = (
    "driftfile /var/lib/ntp/drift\nrestrict default nomodify notrap nopeer noquery\nrestrict 127.0.0.1\n"
    "restrict ::1\nserver 0.centos.pool.ntp.org iburst\nserver 1.centos.pool.ntp.org iburst\n"
    "server 2.centos.pool.ntp.org iburst\nserver 3.centos.pool.ntp.org iburst\n"
    "includefile /etc/ntp/crypto/pw\nkeys /etc/ntp/keys\ndisable monitor\n"
)


def centos7(*, step_tickers: str = "# List of NTP servers used by the ntpdate service.\n\n0.centos.pool.ntp.org\n",
            ntp_conf: str = CENTOS7_NTP_CONF) -> Files:
    """The original case: ntpd enabled (-g), ntpdate.service installed but not enabled, chrony installed
    and disabled (chronyd and ntpd conflict), an application ordered only after network.target."""
    files = _base(USR_LIB)
    files.update({
        f"{USR_LIB}/ntpd.service": CENTOS7_NTPD,
        f"{USR_LIB}/ntpdate.service": CENTOS7_NTPDATE,
        f"{USR_LIB}/chronyd.service": CENTOS7_CHRONYD,
        f"{USR_LIB}/chrony-wait.service": CENTOS7_CHRONY_WAIT,
        "/etc/sysconfig/ntpd": '# Command line options for ntpd\nOPTIONS="-g"\n',
        "/etc/sysconfig/ntpdate": ('# Options for ntpdate\nOPTIONS="-p 2"\n\n# Number of retries before giving up\n'
                                   "RETRIES=2\n\n# Set to 'yes' to sync hw clock after successful ntpdate\n"
                                   "SYNC_HWCLOCK=no\n"),
        "/etc/ntp/step-tickers": step_tickers,
        "/etc/ntp.conf": ntp_conf,
        "/etc/sysconfig/chronyd": "# Command-line options for chronyd\nOPTIONS=\"\"\n",
        "/etc/chrony.conf": ("server 0.centos.pool.ntp.org iburst\ndriftfile /var/lib/chrony/drift\n"
                             "makestep 1.0 3\nrtcsync\nlogdir /var/log/chrony\n"),
    })
    _enable(files, USR_LIB, "ntpd.service")
    return files


# -- Fedora 39 / RHEL 9 / Alma / Rocky 9 (chrony-4.4-1.fc39; RHEL 9: chrony-4.3/4.5, same units) ----------

FEDORA_CHRONYD = (
    "[Unit]\nDescription=NTP client/server\nDocumentation=man:chronyd(8) man:chrony.conf(5)\n"
    "After=chronyd-restricted.service ntpdate.service sntp.service ntpd.service\n"
    "Conflicts=chronyd-restricted.service ntpd.service systemd-timesyncd.service\n"
    "ConditionCapability=CAP_SYS_TIME\n\n[Service]\nType=forking\nPIDFile=/run/chrony/chronyd.pid\n"
    "EnvironmentFile=-/etc/sysconfig/chronyd\nExecStart=/usr/sbin/chronyd $OPTIONS\n\n"
    "[Install]\nWantedBy=multi-user.target\n"
)
#: chrony 4.x upstream examples/chrony-wait.service, as packaged by Fedora, RHEL 8/9 and openSUSE
CHRONY4_WAIT = (
    "[Unit]\nDescription=Wait for chrony to synchronize system clock\nDocumentation=man:chronyc(1)\n"
    "After=chronyd.service\nRequires=chronyd.service\nBefore=time-sync.target\nWants=time-sync.target\n\n"
    "[Service]\nType=oneshot\n# Wait for chronyd to update the clock and the remaining\n"
    "# correction to be less than 0.1 seconds\nExecStart=/usr/bin/chronyc -h 127.0.0.1,::1 waitsync 0 0.1 0.0 1\n"
    "# Wait for at most 3 minutes\nTimeoutStartSec=180\nRemainAfterExit=yes\nStandardOutput=null\n\n"
    "[Install]\nWantedBy=multi-user.target\n"
)
FEDORA_CHRONY_CONF = (
    "# Use public servers from the pool.ntp.org project.\npool 2.fedora.pool.ntp.org iburst\n"
    "sourcedir /run/chrony-dhcp\ndriftfile /var/lib/chrony/drift\n"
    "# Allow the system clock to be stepped in the first three updates\n# if its offset is larger than 1 second.\n"
    "makestep 1.0 3\nrtcsync\nkeyfile /etc/chrony.keys\nntsdumpdir /var/lib/chrony\nleapsectz right/UTC\n"
    "logdir /var/log/chrony\n"
)


def fedora() -> Files:
    """Fedora / RHEL 8-9: chronyd enabled, chrony-wait installed (not enabled), no confdir in chrony.conf."""
    files = _base(USR_LIB)
    files.update({
        f"{USR_LIB}/chronyd.service": FEDORA_CHRONYD,
        f"{USR_LIB}/chrony-wait.service": CHRONY4_WAIT,
        "/etc/sysconfig/chronyd": '# Command-line options for chronyd\nOPTIONS="-F 2"\n',
        "/etc/chrony.conf": FEDORA_CHRONY_CONF,
    })
    _enable(files, USR_LIB, "chronyd.service")
    return files


# -- openSUSE Leap 15.5 / SLES 15 SP5 (chrony-4.1-150400.21.x) -------------------------------------------

SUSE_CHRONYD = (
    "[Unit]\nDescription=NTP client/server\nDocumentation=man:chronyd(8) man:chrony.conf(5)\n"
    "After=ntpdate.service sntp.service ntpd.service\nConflicts=ntpd.service systemd-timesyncd.service\n"
    "ConditionCapability=CAP_SYS_TIME\n\n[Service]\nType=forking\nPIDFile=/run/chronyd.pid\n"
    "EnvironmentFile=-/etc/sysconfig/chronyd\nExecStart=/usr/sbin/chronyd $OPTIONS\n\n"
    "[Install]\nWantedBy=multi-user.target\n"
)


def suse() -> Files:
    """openSUSE/SLES: chronyd enabled, chrony-wait installed, servers and settings in /etc/chrony.d/."""
    files = _base(USR_LIB)
    files.update({
        f"{USR_LIB}/chronyd.service": SUSE_CHRONYD,
        f"{USR_LIB}/chrony-wait.service": CHRONY4_WAIT,
        "/etc/sysconfig/chronyd": '## Path:        Network/NTP\nCHRONY_OPTIONS=""\n',
        "/etc/chrony.conf": ("# Use public servers from the pool.ntp.org project.\n! pool pool.ntp.org iburst\n"
                             "include /etc/chrony.d/*.conf\ndriftfile /var/lib/chrony/drift\n"
                             "makestep 1.0 3\nrtcsync\nlogdir /var/log/chrony\n"),
        "/etc/chrony.d/pool.conf": "pool 2.opensuse.pool.ntp.org iburst\n",
    })
    _enable(files, USR_LIB, "chronyd.service")
    return files


# -- Ubuntu 22.04 (systemd-timesyncd 249.11-0ubuntu3) and Ubuntu/Debian ntpsec (ntpsec 1.2.2) ------------

UBUNTU_TIMESYNCD = (
    "[Unit]\nDescription=Network Time Synchronization\nDocumentation=man:systemd-timesyncd.service(8)\n"
    "ConditionCapability=CAP_SYS_TIME\nConditionVirtualization=!container\nDefaultDependencies=no\n"
    "After=systemd-sysusers.service\nBefore=time-set.target sysinit.target shutdown.target\n"
    "Conflicts=shutdown.target\nWants=time-set.target\n\n[Service]\nType=notify\n"
    "ExecStart=!!/lib/systemd/systemd-timesyncd\nUser=systemd-timesync\nWatchdogSec=3min\n\n"
    "[Install]\nWantedBy=sysinit.target\nAlias=dbus-org.freedesktop.timesync1.service\n"
)
TIME_WAIT_SYNC = (
    "[Unit]\nDescription=Wait Until Kernel Time Synchronized\nDocumentation=man:systemd-time-wait-sync.service(8)\n"
    "ConditionCapability=CAP_SYS_TIME\nConditionVirtualization=!container\nDefaultDependencies=no\n"
    "Before=time-sync.target shutdown.target\nWants=time-sync.target\nConflicts=shutdown.target\n\n"
    "[Service]\nType=oneshot\nExecStart=/lib/systemd/systemd-time-wait-sync\nTimeoutStartSec=infinity\n"
    "RemainAfterExit=yes\n\n[Install]\nWantedBy=sysinit.target\n"
)


def ubuntu() -> Files:
    """Ubuntu 22.04 as installed: timesyncd enabled, systemd-time-wait-sync installed and not enabled."""
    files = _base(DEB_LIB)
    files.update({
        f"{DEB_LIB}/systemd-timesyncd.service": UBUNTU_TIMESYNCD,
        f"{DEB_LIB}/systemd-time-wait-sync.service": TIME_WAIT_SYNC,
        "/etc/systemd/timesyncd.conf": "[Time]\n#NTP=\n#FallbackNTP=ntp.ubuntu.com\n",
    })
    _enable(files, DEB_LIB, "systemd-timesyncd.service", "sysinit.target")
    return files


#: ntpsec 1.2.2+dfsg1 (Debian 12 / Ubuntu 23.04+): ntpsec.service and ntpsec-wait.service
NTPSEC = (
    "[Unit]\nDescription=Network Time Service\nDocumentation=man:ntpd(8)\nWants=network.target\n"
    "ConditionCapability=CAP_SYS_TIME\nAfter=network.target\nConflicts=systemd-timesyncd.service\n\n"
    "[Service]\nType=forking\nPIDFile=/run/ntpd.pid\nEnvironmentFile=-/etc/default/ntpsec\n"
    "ExecStart=/usr/libexec/ntpsec/ntp-systemd-wrapper\nPrivateTmp=true\n\n"
    "[Install]\nAlias=ntp.service ntpd.service\nWantedBy=multi-user.target\n"
)
NTPSEC_WAIT = (
    "[Unit]\nDescription=Wait for ntpd to synchronize system clock\nDocumentation=man:ntp-wait(8)\n"
    "After=ntpsec.service\nRequires=ntpsec.service\nBefore=time-sync.target\nWants=time-sync.target\n\n"
    "[Service]\nType=oneshot\nExecStart=/usr/sbin/ntp-wait\nRemainAfterExit=yes\n\n"
    "[Install]\nWantedBy=multi-user.target\n"
)


def ntpsec() -> Files:
    """Debian 12 / Ubuntu with ntpsec: ntpsec enabled (-g -N), ntpsec-wait installed, not enabled."""
    files = _base(DEB_LIB)
    files.update({
        f"{DEB_LIB}/ntpsec.service": NTPSEC,
        f"{DEB_LIB}/ntpsec-wait.service": NTPSEC_WAIT,
        f"{ETC}/ntp.service": Link(f"{DEB_LIB}/ntpsec.service"),
        f"{ETC}/ntpd.service": Link(f"{DEB_LIB}/ntpsec.service"),
        "/etc/default/ntpsec": 'NTPD_OPTS="-g -N"\nIGNORE_DHCP=""\n',
        "/etc/ntpsec/ntp.conf": ("driftfile /var/lib/ntpsec/ntp.drift\nleapfile /usr/share/zoneinfo/leap-seconds.list\n"
                                 "tos maxclock 11\ntos minclock 4 minsane 3\npool 0.debian.pool.ntp.org iburst\n"
                                 "restrict default kod nomodify nopeer noquery limited\nrestrict 127.0.0.1\n"),
    })
    _enable(files, DEB_LIB, "ntpsec.service")
    return files


FAMILIES = {"centos7": centos7, "fedora": fedora, "suse": suse, "ubuntu": ubuntu, "ntpsec": ntpsec}
