"""Fixture roots of the time-service layouts of each distribution family (issue 12), for pure-logic tests.

Every unit file and default below cites the published copy it was checked against, line by
line, and says what was not checked. Unit texts are trimmed to what systemd's ordering and the
audit read ([Unit] dependencies and conditions, Type=, ExecStart=, Environment(File)=, timeouts,
[Install]); sandboxing lines (Protect*, CapabilityBoundingSet=, SystemCallFilter=...) are left
out and said so. The copies used:

* RHEL 7's source RPMs as published, ``ntp-4.2.6p5-29.el7.src.rpm`` and ``chrony-3.4-1.el7.src.rpm``
  (GitHub ``eurolinux-enterprise-linux-sources/ntp`` and ``/chrony``, branch ``el7``: the
  SOURCES of the RPM, and for chrony the spec's own md5 check of the installed examples).
  CentOS 7 (ntp-4.2.6p5-29.el7.centos.2, chrony-3.4-1.el7) is the rebuild of those. Its vendor
  zone: CentOS's own ntp.spec (``4.2.6p5-29.el7.centos.2``, "rebrand vendorzone", CentOS Sources)
  sets ``%{?rhel: %global vendorzone centos.}`` -- read in GitHub ``redsleeve-linux/el7``, commit
  ca30e11 "ntp: upstream version 4.2.6p5-29.el7.centos.2", which imports CentOS's spec unchanged
  (RedSleeve rebrands it in a later commit). chrony's spec (3.2 and later, 3.4-1.el7 included,
  which CentOS rebuilt without a spec change: no ``.centos`` release) takes the zone from the
  build host, ``%(source /etc/os-release && echo ${ID}.)``, i.e. ``centos.`` on CentOS's builders;
  the built CentOS chrony.conf itself was NOT seen.
* chrony upstream's ``examples/`` at its release tags (GitHub ``spmadden/chrony``, tags
  ``chrony/4.1`` ... ``chrony/4.7``, a mirror of upstream with Fedora's and Ubuntu's packaging
  branches), which the RHEL, Fedora and openSUSE specs install as the unit files. Each text
  below was checked against the md5 sums the spec itself verifies after patching.
* RHEL 8 and 9's source RPMs as OpenELA publishes them (GitHub ``openela-main/chrony``, branches
  ``el8`` = chrony-4.2-1.el8 and ``el9`` = chrony-4.3-1.el9, i.e. RHEL 8.8 and 9.2): SPECS and
  SOURCES (patches applied to the upstream tag reproduce the spec's md5 sums). Alma and Rocky
  rebuild these sources; their builds' vendor zone (the spec takes ``${ID}.`` from the build
  host's os-release: ``rhel.`` for RHEL) is NOT checked.
* Fedora's package sources (``spmadden/chrony`` branch ``fedora/f42``: chrony 4.8-1, spec of
  Aug 2025), and Fedora's and RHEL 9's presets (``90-default.preset``: GitHub
  ``yuwata/systemd-fedora`` and ``EuroLinux/eurolinux-9-el-release``, a RHEL 9 rebuild's copy):
  both ``enable chronyd.service`` and nothing for chrony-wait/chronyd-restricted (disabled).
* openSUSE's chrony package sources (GitHub ``bmwiedemann/openSUSE``, ``packages/c/chrony``, as
  stored by the code index): ``chrony.spec`` of chrony 4.1 (commit 493f4a2, OBS rev 28, June
  2021), ``chrony-service-ordering.patch`` and ``chronyd.sysconfig`` in the versions of that time
  (see the SUSE section), ``pool.conf.opensuse``.
* Debian 12's own packages, downloaded with ``apt-get download`` and unpacked with ``dpkg-deb -x``:
  ``ntpsec 1.2.2+dfsg1-1+deb12u1``, ``systemd-timesyncd 252.39-1~deb12u2``,
  ``systemd 252.39-1~deb12u2``. The same layouts also run for real: the debootstrapped Debian 12
  roots (test_guest_rootfs.py) and the lab boots (test_guest_boot_proof.py boots ntpsec).
* Ubuntu's systemd source at its release commits, GitHub ``pop-os/systemd`` (Pop!_OS's fork, which
  carries Ubuntu's git history): commit ca6a2b8 "Release systemd 249.11-0ubuntu3.12" (jammy,
  22.04) and 24f87a1 "Release systemd 255.4-1ubuntu8.3" (noble, 24.04; 8.4 is a no-change
  rebuild), both before Pop's own patches. None of Ubuntu's quilt patches touches the timesyncd
  or time-wait-sync units, the targets or timesyncd.conf; ``debian/rules`` sets
  ``-Dntp-servers=ntp.ubuntu.com`` on Ubuntu, jammy builds split-usr (units in
  ``/lib/systemd/system``), noble merged (``/usr/lib/systemd/system``).

NOT checked against any published copy: Alma's and Rocky's own builds (their chrony.conf vendor
zone), SLE 15's own chrony 4.1 build (the openSUSE Factory sources are its basis), whether Leap 15
has ``/lib`` as a link to ``usr/lib`` (the fixture gives it one), Ubuntu's later jammy updates
(after 249.11-0ubuntu3.12) and the presets of openSUSE.

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
    files[f"{lib}/app.service"] = APP
    files[f"{ETC}/multi-user.target.wants/app.service"] = Link(f"{lib}/app.service")
    if lib == USR_LIB:
        files["/lib"] = Link("usr/lib")  # merged /usr (RHEL, Fedora, Ubuntu; Leap 15 NOT checked)
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
#: (VARNTP -> /var/lib/ntp, ETCNTP -> /etc/ntp; VENDORZONE. -> centos. as CentOS's 4.2.6p5-29.el7.centos.2
#: spec sets it, see above).
CENTOS7_NTP_CONF = (
    "driftfile /var/lib/ntp/drift\nrestrict default nomodify notrap nopeer noquery\nrestrict 127.0.0.1 \n"
    "restrict ::1\nserver 0.centos.pool.ntp.org iburst\nserver 1.centos.pool.ntp.org iburst\n"
    "server 2.centos.pool.ntp.org iburst\nserver 3.centos.pool.ntp.org iburst\n"
    "includefile /etc/ntp/crypto/pw\nkeys /etc/ntp/keys\ndisable monitor\n"
)
#: ntp-4.2.6p5-29.el7.src.rpm: ntp.step-tickers (SOURCE6), VENDORZONE. substituted as for ntp.conf.
CENTOS7_STEP_TICKERS = "# List of NTP servers used by the ntpdate service.\n\n0.centos.pool.ntp.org\n"
#: ntp-4.2.6p5-29.el7.src.rpm: ntpd.sysconfig (SOURCE4) and ntpdate.sysconfig (SOURCE9), whole files.
CENTOS7_SYSCONFIG_NTPD = '# Command line options for ntpd\nOPTIONS="-g"\n'
CENTOS7_SYSCONFIG_NTPDATE = ("# Options for ntpdate\nOPTIONS=\"-p 2\"\n\n"
                             "# Set to 'yes' to sync hw clock after successful ntpdate\nSYNC_HWCLOCK=no\n")
#: chrony-3.4-1.el7.src.rpm: /etc/sysconfig/chronyd as chrony.spec writes it.
CENTOS7_SYSCONFIG_CHRONYD = '# Command-line options for chronyd\nOPTIONS=""\n'
#: chrony-3.4-1.el7.src.rpm: chrony.conf = upstream 3.4 examples/chrony.conf.example2 with the spec's sed
#: (the pool line becomes four server lines of the vendor zone, ``centos.`` from CentOS's build hosts'
#: os-release; the built file NOT seen, see above), active lines.
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


# -- Fedora 42 (chrony 4.8-1.fc42), RHEL/Alma/Rocky 9 (chrony 4.3-1.el9) and 8 (chrony 4.2-1.el8) ---------

#: Fedora 42, chrony 4.8-1: chronyd.service = upstream examples/chronyd.service unpatched (the spec's md5
#: 274a44cd..., the text of upstream 4.7's, checked at tag chrony/4.7): Type=notify with chronyd -n since
#: 4.7. Sandboxing lines (CapabilityBoundingSet= ... RestrictAddressFamilies=) left out.
FEDORA_CHRONYD = (
    "[Unit]\nDescription=NTP client/server\nDocumentation=man:chronyd(8) man:chrony.conf(5)\n"
    "After=ntpdate.service sntp.service ntpd.service\nConflicts=ntpd.service systemd-timesyncd.service\n"
    "ConditionCapability=CAP_SYS_TIME\n\n[Service]\nType=notify\nPIDFile=/run/chrony/chronyd.pid\n"
    "Environment=\"OPTIONS=\"\nEnvironmentFile=-/etc/sysconfig/chronyd\nExecStart=/usr/sbin/chronyd -n $OPTIONS\n\n"
    "[Install]\nWantedBy=multi-user.target\n"
)
#: Fedora 42, chrony 4.8-1: chronyd-restricted.service = upstream's (md5 5ddbb8a8..., upstream 4.7's text)
#: with the spec's sed adding SELinuxContext= after ExecStart=; installed, not enabled (preset). Its
#: comments, User=/...Directory= and sandboxing lines left out.
FEDORA_CHRONYD_RESTRICTED = (
    "[Unit]\nDescription=NTP client (restricted)\nDocumentation=man:chronyd(8) man:chrony.conf(5)\n"
    "After=chronyd.service ntpdate.service sntp.service ntpd.service\n"
    "Conflicts=chronyd.service ntpd.service systemd-timesyncd.service\nConditionCapability=CAP_SYS_TIME\n\n"
    "[Service]\nType=notify\nPIDFile=/run/chrony/chronyd.pid\nEnvironment=\"OPTIONS=\"\n"
    "EnvironmentFile=-/etc/sysconfig/chronyd\nExecStart=/usr/sbin/chronyd -n -U $OPTIONS\n"
    "SELinuxContext=system_u:system_r:chronyd_restricted_t:s0\n\n[Install]\nWantedBy=multi-user.target\n"
)
#: upstream chrony 4.1 examples/chrony-wait.service, whole file (md5 bc563c1b...). RHEL 8's 4.2-1.el8 ships
#: this text: its chrony-services.patch takes out the sandboxing 4.2 added (the spec's md5 is bc563c1b...).
CHRONY4_WAIT = (
    "[Unit]\nDescription=Wait for chrony to synchronize system clock\nDocumentation=man:chronyc(1)\n"
    "After=chronyd.service\nRequires=chronyd.service\nBefore=time-sync.target\nWants=time-sync.target\n\n"
    "[Service]\nType=oneshot\n# Wait for chronyd to update the clock and the remaining\n"
    "# correction to be less than 0.1 seconds\nExecStart=/usr/bin/chronyc -h 127.0.0.1,::1 waitsync 0 0.1 0.0 1\n"
    "# Wait for at most 3 minutes\nTimeoutStartSec=180\nRemainAfterExit=yes\nStandardOutput=null\n\n"
    "[Install]\nWantedBy=multi-user.target\n"
)
#: Fedora 42 (4.8-1, md5 5530d6e6..., upstream 4.4 to 4.7's text) and RHEL 9 (4.3-1.el9, md5 222e652b...:
#: upstream 4.3's with chrony-services.patch commenting out DynamicUser=yes): the 4.1 text plus sandboxing
#: lines in [Service], which are left out -- so the same trimmed text.
CHRONY4_WAIT_SANDBOXED = CHRONY4_WAIT
#: Fedora 42, chrony 4.8-1: /etc/chrony.conf = upstream example2 with chrony-defconfig.patch reverted
#: (md5 826354a2..., upstream 4.6.1's example2) and the spec's sed (pool 2.fedora.pool.ntp.org, the
#: vendor zone from os-release; sourcedir /run/chrony-dhcp; leapseclist uncommented), active lines.
FEDORA_CHRONY_CONF = (
    "pool 2.fedora.pool.ntp.org iburst\nsourcedir /run/chrony-dhcp\ndriftfile /var/lib/chrony/drift\n"
    "makestep 1.0 3\nrtcsync\nntsdumpdir /var/lib/chrony\nleapseclist /usr/share/zoneinfo/leap-seconds.list\n"
    "logdir /var/log/chrony\n"
)
#: Fedora 42 (4.8-1) and RHEL 9 (4.3-1.el9): /etc/sysconfig/chronyd as the spec writes it, seccomp on.
CHRONY_SYSCONFIG_SECCOMP = '# Command-line options for chronyd\nOPTIONS="-F 2"\n'

#: RHEL 9, chrony-4.3-1.el9: chronyd.service = upstream 4.3's with chrony-services.patch (ProtectSystem=full
#: instead of strict, the ReadWritePaths= lines dropped; md5 619dd000...), sandboxing lines left out.
RHEL9_CHRONYD = (
    "[Unit]\nDescription=NTP client/server\nDocumentation=man:chronyd(8) man:chrony.conf(5)\n"
    "After=ntpdate.service sntp.service ntpd.service\nConflicts=ntpd.service systemd-timesyncd.service\n"
    "ConditionCapability=CAP_SYS_TIME\n\n[Service]\nType=forking\nPIDFile=/run/chrony/chronyd.pid\n"
    "EnvironmentFile=-/etc/sysconfig/chronyd\nExecStart=/usr/sbin/chronyd $OPTIONS\n\n"
    "[Install]\nWantedBy=multi-user.target\n"
)
#: RHEL 9, chrony-4.3-1.el9: /etc/chrony.conf = upstream 4.3 example2 (md5 2d01b94b...) with the spec's sed
#: (pool 2.rhel.pool.ntp.org; sourcedir /run/chrony-dhcp; leapsectz and keyfile uncommented), active lines.
RHEL9_CHRONY_CONF = (
    "pool 2.rhel.pool.ntp.org iburst\nsourcedir /run/chrony-dhcp\ndriftfile /var/lib/chrony/drift\n"
    "makestep 1.0 3\nrtcsync\nkeyfile /etc/chrony.keys\nntsdumpdir /var/lib/chrony\nleapsectz right/UTC\n"
    "logdir /var/log/chrony\n"
)
#: RHEL 8, chrony-4.2-1.el8: chronyd.service = upstream 4.2's with chrony-services.patch (sandboxing back to
#: PrivateTmp/ProtectHome/ProtectSystem=full) and chrony-service-helper.patch (the helper ExecStartPost=/
#: ExecStopPost=); the spec's md5 56d221eb..., whole file.
RHEL8_CHRONYD = (
    "[Unit]\nDescription=NTP client/server\nDocumentation=man:chronyd(8) man:chrony.conf(5)\n"
    "After=ntpdate.service sntp.service ntpd.service\nConflicts=ntpd.service systemd-timesyncd.service\n"
    "ConditionCapability=CAP_SYS_TIME\n\n[Service]\nType=forking\nPIDFile=/run/chrony/chronyd.pid\n"
    "EnvironmentFile=-/etc/sysconfig/chronyd\nExecStart=/usr/sbin/chronyd $OPTIONS\n"
    "ExecStartPost=/usr/libexec/chrony-helper update-daemon\n"
    "ExecStopPost=/usr/libexec/chrony-helper remove-daemon-state\n"
    "PrivateTmp=yes\nProtectHome=yes\nProtectSystem=full\n\n[Install]\nWantedBy=multi-user.target\n"
)
#: RHEL 8, chrony-4.2-1.el8: /etc/chrony.conf = upstream 4.2 example2 with chrony-defconfig.patch (md5
#: e473a9fa...: no ntsdumpdir) and the spec's sed (pool 2.rhel.pool.ntp.org; leapsectz and keyfile
#: uncommented; no sourcedir, DHCP servers come from chrony-helper), active lines.
RHEL8_CHRONY_CONF = (
    "pool 2.rhel.pool.ntp.org iburst\ndriftfile /var/lib/chrony/drift\nmakestep 1.0 3\nrtcsync\n"
    "keyfile /etc/chrony.keys\nleapsectz right/UTC\nlogdir /var/log/chrony\n"
)
#: RHEL 8, chrony-4.2-1.el8: /etc/sysconfig/chronyd as the spec writes it (no -F there).
RHEL8_SYSCONFIG_CHRONYD = '# Command-line options for chronyd\nOPTIONS=""\n'


def _chrony_el(*, chronyd: str, wait: str, sysconfig: str, conf: str, extra: Files | None = None) -> Files:
    files = _base(USR_LIB)
    files.update({
        f"{USR_LIB}/chronyd.service": chronyd,
        f"{USR_LIB}/chrony-wait.service": wait,
        "/etc/sysconfig/chronyd": sysconfig,
        "/etc/chrony.conf": conf,
    })
    files.update(extra or {})
    _enable(files, USR_LIB, "chronyd.service")  # 90-default.preset: enable chronyd.service
    return files


def fedora() -> Files:
    """Fedora 42: chronyd (Type=notify) enabled, chrony-wait and chronyd-restricted installed, not enabled."""
    return _chrony_el(chronyd=FEDORA_CHRONYD, wait=CHRONY4_WAIT_SANDBOXED, sysconfig=CHRONY_SYSCONFIG_SECCOMP,
                      conf=FEDORA_CHRONY_CONF,
                      extra={f"{USR_LIB}/chronyd-restricted.service": FEDORA_CHRONYD_RESTRICTED})


def rhel9() -> Files:
    """RHEL 9 (and its rebuilds): chronyd enabled (-F 2), chrony-wait installed, not enabled."""
    return _chrony_el(chronyd=RHEL9_CHRONYD, wait=CHRONY4_WAIT_SANDBOXED, sysconfig=CHRONY_SYSCONFIG_SECCOMP,
                      conf=RHEL9_CHRONY_CONF)


def rhel8() -> Files:
    """RHEL 8 (and its rebuilds): chronyd (with chrony-helper) enabled, chrony-wait installed, not enabled."""
    return _chrony_el(chronyd=RHEL8_CHRONYD, wait=CHRONY4_WAIT, sysconfig=RHEL8_SYSCONFIG_CHRONYD,
                      conf=RHEL8_CHRONY_CONF)


# -- openSUSE (chrony 4.1, openSUSE Factory June 2021; the basis of Leap/SLE 15 SP4's 4.1) -------------------
#
# chrony-service-ordering.patch has two versions in the repository's history. The one of chrony 4.1
# (added for 3.4 in March 2019, bsc#1129914, and still the text in mid 2024, commit d6c55c2) patches
# chronyd.service only: After=ntpdate.service sntp.service ntpd.service becomes After=nss-lookup.target,
# Wants=network.target, After=network.target, Wants=time-sync.target, Before=time-sync.target -- so
# chronyd.service itself holds time-sync.target, as Debian's chrony.service does. The newer one (commit
# 40208c1, with the "-s" sysconfig of 2025) drops the time-sync lines and gives chrony-wait.service
# After=/Wants=network-online.target instead. The spec applies it with -p0 (``%patch3``).

#: upstream chrony 4.1 examples/chronyd.service with the 4.1-era chrony-service-ordering.patch; the
#: spec's helper ExecStartPost= (chrony-service-helper.patch) and sandboxing lines left out.
SUSE_CHRONYD = (
    "[Unit]\nDescription=NTP client/server\nDocumentation=man:chronyd(8) man:chrony.conf(5)\n"
    "After=nss-lookup.target\nWants=network.target\nAfter=network.target\nWants=time-sync.target\n"
    "Before=time-sync.target\nConflicts=ntpd.service systemd-timesyncd.service\n"
    "ConditionCapability=CAP_SYS_TIME\n\n[Service]\nType=forking\nPIDFile=/run/chrony/chronyd.pid\n"
    "EnvironmentFile=-/etc/sysconfig/chronyd\nExecStart=/usr/sbin/chronyd $OPTIONS\nPrivateTmp=yes\n"
    "ProtectHome=yes\nProtectSystem=full\n\n[Install]\nWantedBy=multi-user.target\n"
)
#: upstream chrony 4.1 examples/chrony-wait.service: the 4.1-era ordering patch leaves it alone (the
#: hardening patch of Aug 2021 only adds [Service] sandboxing, left out).
SUSE_CHRONY_WAIT = CHRONY4_WAIT
#: chrony.spec (4.1): chrony.conf = upstream 4.1 examples/chrony.conf.example2 (chrony-config.patch touches
#: example3 only) with "pool" turned into "! pool" and an include of /etc/chrony.d/*.conf appended.
SUSE_CHRONY_CONF = ("! pool pool.ntp.org iburst\ndriftfile /var/lib/chrony/drift\nmakestep 1.0 3\nrtcsync\n"
                    "ntsdumpdir /var/lib/chrony\nlogdir /var/log/chrony\n\n"
                    "# Also include any directives found in configuration files in /etc/chrony.d\n"
                    "include /etc/chrony.d/*.conf\n")
#: chronyd.sysconfig as of Sept 2020 ("Adjust and rename the sysconfig file, so that it matches the
#: expectations of chronyd.service", bsc#1173277; stored at commit 6989ce5, chrony 3.5.1) -- its only
#: other version is the later OPTIONS="-s" one -- installed as a fillup template, /etc/sysconfig/chronyd.
SUSE_SYSCONFIG_CHRONYD = ('## Path:\tNetwork/Chrony\n## Description:\tChrony time synchronization settings\n'
                          '## Type:\tstring\n## Default:\t""\n## ServiceRestart: chronyd\n#\n'
                          '# Command line options for chronyd\n#\nOPTIONS=""\n')


def suse() -> Files:
    """openSUSE/SLES: chronyd enabled (and before time-sync.target), chrony-wait installed, servers in pool.conf."""
    files = _base(USR_LIB)
    files.update({
        f"{USR_LIB}/chronyd.service": SUSE_CHRONYD,
        f"{USR_LIB}/chrony-wait.service": SUSE_CHRONY_WAIT,
        "/etc/sysconfig/chronyd": SUSE_SYSCONFIG_CHRONYD,
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


# -- Ubuntu 22.04 (systemd 249.11-0ubuntu3.12) and 24.04 (systemd 255.4-1ubuntu8.3) timesyncd --------------
#
# units/systemd-timesyncd.service.in and units/systemd-time-wait-sync.service.in of those releases have the
# same [Unit] and [Install] lines as Debian 12's (252) above; only the ExecStart= directory differs
# ({{ROOTLIBEXECDIR}} = /lib/systemd on jammy's split-usr build, {{LIBEXECDIR}} = /usr/lib/systemd on noble).
# Both are merged-/usr installs, so jammy's /lib/systemd/system is /usr/lib/systemd/system through the /lib
# link: the fixture keeps the files there and the enablement links on the path the package names.

#: Ubuntu 22.04, systemd-timesyncd 249.11-0ubuntu3.12: systemd-timesyncd.service (SERVICE_WATCHDOG=3min),
#: its Environment=, sandboxing lines and Restart= left out.
UBUNTU2204_TIMESYNCD = TIMESYNCD
#: Ubuntu 24.04, systemd-timesyncd 255.4-1ubuntu8.3: the same with /usr/lib/systemd/systemd-timesyncd.
UBUNTU2404_TIMESYNCD = TIMESYNCD.replace("!!/lib/systemd/", "!!/usr/lib/systemd/")
#: Ubuntu 22.04, systemd 249.11-0ubuntu3.12: systemd-time-wait-sync.service, its comments left out.
UBUNTU2204_TIME_WAIT_SYNC = TIME_WAIT_SYNC
#: Ubuntu 24.04, systemd 255.4-1ubuntu8.3: the same with /usr/lib/systemd/systemd-time-wait-sync.
UBUNTU2404_TIME_WAIT_SYNC = TIME_WAIT_SYNC.replace("=/lib/systemd/", "=/usr/lib/systemd/")
#: Ubuntu 22.04: /etc/systemd/timesyncd.conf (src/timesync/timesyncd.conf.in, NTP_SERVERS=ntp.ubuntu.com),
#: its [Time] lines.
UBUNTU2204_TIMESYNCD_CONF = ("[Time]\n#NTP=\n#FallbackNTP=ntp.ubuntu.com\n#RootDistanceMaxSec=5\n"
                             "#PollIntervalMinSec=32\n#PollIntervalMaxSec=2048\n")
#: Ubuntu 24.04: the same file of 255, two settings more.
UBUNTU2404_TIMESYNCD_CONF = UBUNTU2204_TIMESYNCD_CONF + "#ConnectionRetrySec=30\n#SaveIntervalSec=60\n"


def _ubuntu(lib: str, timesyncd_unit: str, wait_unit: str, conf: str) -> Files:
    files = _base(USR_LIB)  # merged /usr: /lib -> usr/lib
    files.update({
        f"{USR_LIB}/systemd-timesyncd.service": timesyncd_unit,
        f"{USR_LIB}/systemd-time-wait-sync.service": wait_unit,
        "/etc/systemd/timesyncd.conf": conf,
    })
    _enable(files, lib, "systemd-timesyncd.service", "sysinit.target")  # the package's postinst
    return files


def ubuntu2204() -> Files:
    """Ubuntu 22.04: systemd-timesyncd enabled, systemd-time-wait-sync installed (systemd), not enabled."""
    return _ubuntu(DEB_LIB, UBUNTU2204_TIMESYNCD, UBUNTU2204_TIME_WAIT_SYNC, UBUNTU2204_TIMESYNCD_CONF)


def ubuntu2404() -> Files:
    """Ubuntu 24.04: as 22.04, units in /usr/lib/systemd/system."""
    return _ubuntu(USR_LIB, UBUNTU2404_TIMESYNCD, UBUNTU2404_TIME_WAIT_SYNC, UBUNTU2404_TIMESYNCD_CONF)


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


FAMILIES = {"centos7": centos7, "fedora": fedora, "rhel9": rhel9, "rhel8": rhel8, "suse": suse,
            "timesyncd": timesyncd, "ubuntu2204": ubuntu2204, "ubuntu2404": ubuntu2404, "ntpsec": ntpsec}
