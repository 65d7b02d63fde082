"""Fixture roots of the time-service layouts of each distribution family (issue 12), for pure-logic tests.

Every unit file and default below cites the published copy it was checked against, line by
line, and says what was not checked. Unit texts are trimmed to what systemd's ordering and the
audit read ([Unit] dependencies and conditions, Type=, ExecStart=, EnvironmentFile=, timeouts,
[Install]); sandboxing lines (Protect*, CapabilityBoundingSet=, SystemCallFilter=...) are left
out and said so. The copies used:

* RHEL 7's source RPMs as published, ``ntp-4.2.6p5-29.el7.src.rpm`` and ``chrony-3.4-1.el7.src.rpm``
  (GitHub ``eurolinux-enterprise-linux-sources/ntp`` and ``/chrony``, branch ``el7``: the
  SOURCES of the RPM, and for chrony the spec's own md5 check of the installed examples).
  CentOS 7 (ntp-4.2.6p5-29.el7.centos.2, chrony-3.4-1.el7) is the rebuild of those; the one
  difference that shows here, the vendor zone the spec substitutes for ``VENDORZONE``
  (``centos.`` instead of ``rhel.``), is NOT checked against the CentOS package.
* chrony upstream's ``examples/`` at its release tags (GitHub ``mlichvar/chrony``), which the
  RHEL and openSUSE specs install as the unit files.
* openSUSE's chrony package sources (GitHub ``bmwiedemann/openSUSE``, ``packages/c/chrony``):
  ``chrony.spec`` of chrony 4.1, and ``chrony-service-ordering.patch`` as the repository holds it
  now (that its text was the same for 4.1 is NOT checked).
* Debian 12's own packages, downloaded with ``apt-get download`` and unpacked with ``dpkg-deb -x``:
  ``ntpsec 1.2.2+dfsg1-1+deb12u1``, ``systemd-timesyncd 252.39-1~deb12u2``,
  ``systemd 252.39-1~deb12u2``. The same layouts also run for real: the debootstrapped Debian 12
  roots (test_guest_rootfs.py) and the lab boots (test_guest_boot_proof.py boots ntpsec).

NOT checked against any published copy: Fedora's and RHEL 8/9's own packaging of chrony 4.x (their
``chrony.conf``, ``/etc/sysconfig/chronyd``, and whether their unit files differ from upstream's
examples), Ubuntu's timesyncd (22.04's 249.11), the exact text of openSUSE Leap's
``/etc/sysconfig/chronyd`` for 4.1.

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


# -- CentOS 7 (ntp/ntpdate 4.2.6p5-29.el7, chrony 3.4-1.el7) ---------------------------------------------

#: ntp-4.2.6p5-29.el7.src.rpm: ntpd.service (SOURCE12), whole file.
CENTOS7_NTPD = (
    "[Unit]\nDescription=Network Time Service\nAfter=syslog.target ntpdate.service sntp.service\n\n"
    "[Service]\nType=forking\nEnvironmentFile=-/etc/sysconfig/ntpd\nExecStart=/usr/sbin/ntpd -u ntp:ntp $OPTIONS\n"
    "PrivateTmp=true\n\n[Install]\nWantedBy=multi-user.target\n"
)
#: ntp-4.2.6p5-29.el7.src.rpm: ntpdate.service (SOURCE13, the ntpdate subpackage), whole file.
CENTOS7_NTPDATE = (
    "[Unit]\nDescription=Set time via NTP\nAfter=network-online.target nss-lookup.target\n"
    "Before=time-sync.target\nWants=time-sync.target network-online.target\n\n"
    "[Service]\nType=oneshot\nExecStart=/usr/libexec/ntpdate-wrapper\nRemainAfterExit=yes\n\n"
    "[Install]\nWantedBy=multi-user.target\n"
)
#: chrony-3.4-1.el7.src.rpm: upstream chrony 3.4 examples/chronyd.service with the spec's
#: chrony-service-helper.patch (md5 921b354e..., the spec's own check), whole file.
CENTOS7_CHRONYD = (
    "[Unit]\nDescription=NTP client/server\nDocumentation=man:chronyd(8) man:chrony.conf(5)\n"
    "After=ntpdate.service sntp.service ntpd.service\nConflicts=ntpd.service systemd-timesyncd.service\n"
    "ConditionCapability=CAP_SYS_TIME\n\n[Service]\nType=forking\nPIDFile=/var/run/chrony/chronyd.pid\n"
    "EnvironmentFile=-/etc/sysconfig/chronyd\nExecStart=/usr/sbin/chronyd $OPTIONS\n"
    "ExecStartPost=/usr/libexec/chrony-helper update-daemon\nPrivateTmp=yes\nProtectHome=yes\n"
    "ProtectSystem=full\n\n[Install]\nWantedBy=multi-user.target\n"
)
#: chrony-3.4-1.el7.src.rpm: upstream chrony 3.4 examples/chrony-wait.service, unpatched (md5 47ad7ecc...).
CENTOS7_CHRONY_WAIT = (
    "[Unit]\nDescription=Wait for chrony to synchronize system clock\nDocumentation=man:chronyc(1)\n"
    "After=chronyd.service\nRequires=chronyd.service\nBefore=time-sync.target\nWants=time-sync.target\n\n"
    "[Service]\nType=oneshot\n# Wait up to ~10 minutes for chronyd to synchronize and the remaining\n"
    "# clock correction to be less than 0.1 seconds\n"
    "ExecStart=/usr/bin/chronyc -h 127.0.0.1,::1 waitsync 600 0.1 0.0 1\n"
    "RemainAfterExit=yes\nStandardOutput=null\n\n[Install]\nWantedBy=multi-user.target\n"
)
#: ntp-4.2.6p5-29.el7.src.rpm: ntp.conf (SOURCE1), its active lines, with the spec's substitutions
#: (VARNTP -> /var/lib/ntp, ETCNTP -> /etc/ntp; VENDORZONE -> centos. not checked, see above).
CENTOS7_NTP_CONF = (
    "driftfile /var/lib/ntp/drift\nrestrict default nomodify notrap nopeer noquery\nrestrict 127.0.0.1 \n"
    "restrict ::1\nserver 0.centos.pool.ntp.org iburst\nserver 1.centos.pool.ntp.org iburst\n"
    "server 2.centos.pool.ntp.org iburst\nserver 3.centos.pool.ntp.org iburst\n"
    "includefile /etc/ntp/crypto/pw\nkeys /etc/ntp/keys\ndisable monitor\n"
)
#: ntp-4.2.6p5-29.el7.src.rpm: ntp.step-tickers (SOURCE6), VENDORZONE substituted (not checked).
CENTOS7_STEP_TICKERS = "# List of NTP servers used by the ntpdate service.\n\n0.centos.pool.ntp.org\n"
#: ntp-4.2.6p5-29.el7.src.rpm: ntpd.sysconfig (SOURCE4) and ntpdate.sysconfig (SOURCE9), whole files.
CENTOS7_SYSCONFIG_NTPD = '# Command line options for ntpd\nOPTIONS="-g"\n'
CENTOS7_SYSCONFIG_NTPDATE = ("# Options for ntpdate\nOPTIONS=\"-p 2\"\n\n"
                             "# Set to 'yes' to sync hw clock after successful ntpdate\nSYNC_HWCLOCK=no\n")
#: chrony-3.4-1.el7.src.rpm: /etc/sysconfig/chronyd as chrony.spec writes it.
CENTOS7_SYSCONFIG_CHRONYD = '# Command-line options for chronyd\nOPTIONS=""\n'
#: chrony-3.4-1.el7.src.rpm: chrony.conf = upstream 3.4 examples/chrony.conf.example2 with the spec's sed
#: (the pool line becomes four server lines of the vendor zone; centos. not checked), active lines.
CENTOS7_CHRONY_CONF = (
    "server 0.centos.pool.ntp.org iburst\nserver 1.centos.pool.ntp.org iburst\n"
    "server 2.centos.pool.ntp.org iburst\nserver 3.centos.pool.ntp.org iburst\n"
    "driftfile /var/lib/chrony/drift\nmakestep 1.0 3\nrtcsync\nlogdir /var/log/chrony\n"
)


def centos7(*, step_tickers: str = CENTOS7_STEP_TICKERS, ntp_conf: str = CENTOS7_NTP_CONF) -> Files:
    """The original case: ntpd enabled (-g), ntpdate.service installed but not enabled, chrony installed
    and disabled (chronyd and ntpd conflict), an application ordered only after network.target."""
    files = _base(USR_LIB)
    files.update({
        f"{USR_LIB}/ntpd.service": CENTOS7_NTPD,
        f"{USR_LIB}/ntpdate.service": CENTOS7_NTPDATE,
        f"{USR_LIB}/chronyd.service": CENTOS7_CHRONYD,
        f"{USR_LIB}/chrony-wait.service": CENTOS7_CHRONY_WAIT,
        "/etc/sysconfig/ntpd": CENTOS7_SYSCONFIG_NTPD,
        "/etc/sysconfig/ntpdate": CENTOS7_SYSCONFIG_NTPDATE,
        "/etc/ntp/step-tickers": step_tickers,
        "/etc/ntp.conf": ntp_conf,
        "/etc/sysconfig/chronyd": CENTOS7_SYSCONFIG_CHRONYD,
        "/etc/chrony.conf": CENTOS7_CHRONY_CONF,
    })
    _enable(files, USR_LIB, "ntpd.service")
    return files


# -- Fedora / RHEL 8-9 / Alma / Rocky (chrony 4.x) ---------------------------------------------------------

#: upstream chrony 4.4 examples/chronyd.service (the unit RHEL's and openSUSE's specs install; Fedora's
#: and RHEL 9's packaging NOT checked), its sandboxing lines (CapabilityBoundingSet=...SystemCallFilter=) left out.
CHRONY4_CHRONYD = (
    "[Unit]\nDescription=NTP client/server\nDocumentation=man:chronyd(8) man:chrony.conf(5)\n"
    "After=ntpdate.service sntp.service ntpd.service\nConflicts=ntpd.service systemd-timesyncd.service\n"
    "ConditionCapability=CAP_SYS_TIME\n\n[Service]\nType=forking\nPIDFile=/run/chrony/chronyd.pid\n"
    "EnvironmentFile=-/etc/sysconfig/chronyd\nExecStart=/usr/sbin/chronyd $OPTIONS\n\n"
    "[Install]\nWantedBy=multi-user.target\n"
)
#: upstream chrony 4.1 and 4.4 examples/chrony-wait.service (the same text), whole file.
CHRONY4_WAIT = (
    "[Unit]\nDescription=Wait for chrony to synchronize system clock\nDocumentation=man:chronyc(1)\n"
    "After=chronyd.service\nRequires=chronyd.service\nBefore=time-sync.target\nWants=time-sync.target\n\n"
    "[Service]\nType=oneshot\n# Wait for chronyd to update the clock and the remaining\n"
    "# correction to be less than 0.1 seconds\nExecStart=/usr/bin/chronyc -h 127.0.0.1,::1 waitsync 0 0.1 0.0 1\n"
    "# Wait for at most 3 minutes\nTimeoutStartSec=180\nRemainAfterExit=yes\nStandardOutput=null\n\n"
    "[Install]\nWantedBy=multi-user.target\n"
)
#: upstream chrony 4.4 examples/chrony.conf.example2, active lines (Fedora's own chrony.conf NOT checked).
CHRONY4_CONF = ("pool pool.ntp.org iburst\ndriftfile /var/lib/chrony/drift\nmakestep 1.0 3\nrtcsync\n"
                "ntsdumpdir /var/lib/chrony\nlogdir /var/log/chrony\n")


def fedora() -> Files:
    """Fedora / RHEL 8-9: chronyd enabled, chrony-wait installed (not enabled), no confdir in chrony.conf."""
    files = _base(USR_LIB)
    files.update({
        f"{USR_LIB}/chronyd.service": CHRONY4_CHRONYD,
        f"{USR_LIB}/chrony-wait.service": CHRONY4_WAIT,
        # the el7 spec's text; Fedora/RHEL 9's own (with -F 2) NOT checked
        "/etc/sysconfig/chronyd": CENTOS7_SYSCONFIG_CHRONYD,
        "/etc/chrony.conf": CHRONY4_CONF,
    })
    _enable(files, USR_LIB, "chronyd.service")
    return files


# -- openSUSE Leap 15 / SLES 15 (chrony 4.1) ---------------------------------------------------------------

#: upstream chrony 4.1 examples/chronyd.service with openSUSE's chrony-service-ordering.patch applied
#: (After=ntpdate.service sntp.service ntpd.service becomes After=nss-lookup.target, After=network.target);
#: the spec's helper ExecStartPost= left out.
SUSE_CHRONYD = (
    "[Unit]\nDescription=NTP client/server\nDocumentation=man:chronyd(8) man:chrony.conf(5)\n"
    "After=nss-lookup.target\nAfter=network.target\nConflicts=ntpd.service systemd-timesyncd.service\n"
    "ConditionCapability=CAP_SYS_TIME\n\n[Service]\nType=forking\nPIDFile=/run/chrony/chronyd.pid\n"
    "EnvironmentFile=-/etc/sysconfig/chronyd\nExecStart=/usr/sbin/chronyd $OPTIONS\nPrivateTmp=yes\n"
    "ProtectHome=yes\nProtectSystem=full\n\n[Install]\nWantedBy=multi-user.target\n"
)
#: upstream chrony 4.1 examples/chrony-wait.service with chrony-service-ordering.patch applied.
SUSE_CHRONY_WAIT = CHRONY4_WAIT.replace(
    "Requires=chronyd.service\n",
    "Requires=chronyd.service\nAfter=network-online.target\nWants=network-online.target\n")
#: chrony.spec (4.1): chrony.conf = upstream 4.1 examples/chrony.conf.example2 with "pool" turned into
#: "! pool" and an include of /etc/chrony.d/*.conf appended; /etc/chrony.d/pool.conf from pool.conf.opensuse.
SUSE_CHRONY_CONF = ("! pool pool.ntp.org iburst\ndriftfile /var/lib/chrony/drift\nmakestep 1.0 3\nrtcsync\n"
                    "ntsdumpdir /var/lib/chrony\nlogdir /var/log/chrony\n\n"
                    "# Also include any directives found in configuration files in /etc/chrony.d\n"
                    "include /etc/chrony.d/*.conf\n")


def suse() -> Files:
    """openSUSE/SLES: chronyd enabled, chrony-wait installed, servers in /etc/chrony.d/pool.conf."""
    files = _base(USR_LIB)
    files.update({
        f"{USR_LIB}/chronyd.service": SUSE_CHRONYD,
        f"{USR_LIB}/chrony-wait.service": SUSE_CHRONY_WAIT,
        # the key chronyd.service reads (openSUSE's 2020 change "matches the expectations of
        # chronyd.service"); the file's exact text for 4.1 NOT checked
        "/etc/sysconfig/chronyd": '## Path:\tNetwork/Chrony\nOPTIONS=""\n',
        "/etc/chrony.conf": SUSE_CHRONY_CONF,
        "/etc/chrony.d/pool.conf": "pool 2.opensuse.pool.ntp.org iburst\n",
    })
    _enable(files, USR_LIB, "chronyd.service")
    return files


# -- Debian 12 timesyncd (systemd 252.39-1~deb12u2) ---------------------------------------------------------

#: systemd-timesyncd 252.39-1~deb12u2: /lib/systemd/system/systemd-timesyncd.service, sandboxing
#: lines (AmbientCapabilities= ... SystemCallFilter=, Restart=) left out.
TIMESYNCD = (
    "[Unit]\nDescription=Network Time Synchronization\nDocumentation=man:systemd-timesyncd.service(8)\n"
    "ConditionCapability=CAP_SYS_TIME\nConditionVirtualization=!container\nDefaultDependencies=no\n"
    "After=systemd-sysusers.service\nBefore=time-set.target sysinit.target shutdown.target\n"
    "Conflicts=shutdown.target\nWants=time-set.target\n\n[Service]\nBusName=org.freedesktop.timesync1\n"
    "ExecStart=!!/lib/systemd/systemd-timesyncd\nType=notify\nUser=systemd-timesync\nWatchdogSec=3min\n\n"
    "[Install]\nWantedBy=sysinit.target\nAlias=dbus-org.freedesktop.timesync1.service\n"
)
#: systemd 252.39-1~deb12u2: /lib/systemd/system/systemd-time-wait-sync.service, its comments left out.
TIME_WAIT_SYNC = (
    "[Unit]\nDescription=Wait Until Kernel Time Synchronized\nDocumentation=man:systemd-time-wait-sync.service(8)\n"
    "ConditionCapability=CAP_SYS_TIME\nConditionVirtualization=!container\nDefaultDependencies=no\n"
    "Before=time-sync.target shutdown.target\nWants=time-sync.target\nConflicts=shutdown.target\n\n"
    "[Service]\nType=oneshot\nExecStart=/lib/systemd/systemd-time-wait-sync\nTimeoutStartSec=infinity\n"
    "RemainAfterExit=yes\n\n[Install]\nWantedBy=sysinit.target\n"
)
#: systemd-timesyncd 252.39-1~deb12u2: /etc/systemd/timesyncd.conf, its [Time] lines.
TIMESYNCD_CONF = ("[Time]\n#NTP=\n#FallbackNTP=0.debian.pool.ntp.org 1.debian.pool.ntp.org 2.debian.pool.ntp.org "
                  "3.debian.pool.ntp.org\n#RootDistanceMaxSec=5\n#PollIntervalMinSec=32\n#PollIntervalMaxSec=2048\n")


def timesyncd() -> Files:
    """Debian 12 with systemd-timesyncd: enabled, systemd-time-wait-sync installed (systemd) and not enabled."""
    files = _base(DEB_LIB)
    files.update({
        f"{DEB_LIB}/systemd-timesyncd.service": TIMESYNCD,
        f"{DEB_LIB}/systemd-time-wait-sync.service": TIME_WAIT_SYNC,
        "/etc/systemd/timesyncd.conf": TIMESYNCD_CONF,
    })
    _enable(files, DEB_LIB, "systemd-timesyncd.service", "sysinit.target")
    return files


# -- Debian 12 ntpsec (ntpsec 1.2.2+dfsg1-1+deb12u1) -------------------------------------------------------

#: ntpsec 1.2.2+dfsg1-1+deb12u1: /lib/systemd/system/ntpsec.service, its comments left out.
NTPSEC = (
    "[Unit]\nDescription=Network Time Service\nDocumentation=man:ntpd(8)\nWants=network.target\n"
    "ConditionCapability=CAP_SYS_TIME\nAfter=network.target nss-lookup.target\nConflicts=systemd-timesyncd.service\n\n"
    "[Service]\nType=forking\nPrivateTmp=true\nPIDFile=/run/ntpd.pid\n"
    "ExecStart=/usr/libexec/ntpsec/ntp-systemd-wrapper\nRestart=no\n\n"
    "[Install]\nAlias=ntp.service\nAlias=ntpd.service\nWantedBy=multi-user.target\n"
)
#: ntpsec 1.2.2+dfsg1-1+deb12u1: /lib/systemd/system/ntpsec-wait.service, whole file. Not ordered
#: Before=time-sync.target itself: WantedBy=time-sync.target, so once enabled the target is ordered
#: after it (a target is ordered after what it wants) -- but nothing pulls time-sync.target in.
NTPSEC_WAIT = (
    "[Unit]\nDescription=Wait for ntpd to synchronize system clock\nDocumentation=man:ntpwait(8)\n"
    "Requisite=ntpsec.service\nAfter=ntpsec.service\nConflicts=systemd-timesyncd.service\n"
    "ConditionCapability=CAP_SYS_TIME\n\n[Service]\nType=oneshot\nExecStart=/usr/sbin/ntpwait -s 1 -n 30000\n"
    "RemainAfterExit=yes\nStandardOutput=null\n\n[Install]\nWantedBy=time-sync.target\n"
)
#: ntpsec 1.2.2+dfsg1-1+deb12u1: /etc/default/ntpsec, its assignments.
NTPSEC_DEFAULT = 'NTPD_OPTS="-g -N"\n\n# Set to "yes" to ignore DHCP servers returned by DHCP.\nIGNORE_DHCP=""\n'
#: ntpsec 1.2.2+dfsg1-1+deb12u1: /etc/ntpsec/ntp.conf, active lines.
NTPSEC_CONF = (
    "driftfile /var/lib/ntpsec/ntp.drift\nleapfile /usr/share/zoneinfo/leap-seconds.list\ntos maxclock 11\n"
    "tos minclock 4 minsane 3\npool 0.debian.pool.ntp.org iburst\npool 1.debian.pool.ntp.org iburst\n"
    "pool 2.debian.pool.ntp.org iburst\npool 3.debian.pool.ntp.org iburst\n"
    "restrict default kod nomodify nopeer noquery limited\nrestrict 127.0.0.1\nrestrict ::1\n"
)


def ntpsec() -> Files:
    """Debian 12 with ntpsec as the package leaves it: ntpsec enabled (its aliases linked), ntpsec-wait installed."""
    files = _base(DEB_LIB)
    files.update({
        f"{DEB_LIB}/ntpsec.service": NTPSEC,
        f"{DEB_LIB}/ntpsec-wait.service": NTPSEC_WAIT,
        f"{ETC}/ntp.service": Link(f"{DEB_LIB}/ntpsec.service"),
        f"{ETC}/ntpd.service": Link(f"{DEB_LIB}/ntpsec.service"),
        "/etc/default/ntpsec": NTPSEC_DEFAULT,
        "/etc/ntpsec/ntp.conf": NTPSEC_CONF,
    })
    _enable(files, DEB_LIB, "ntpsec.service")
    return files


FAMILIES = {"centos7": centos7, "fedora": fedora, "suse": suse, "timesyncd": timesyncd, "ntpsec": ntpsec}
