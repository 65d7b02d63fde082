"""Who owns a guest's crash — libvirt's own ``<on_crash>`` action or vmcrash — and where libvirt's dump is.

Pure functions over text (domain XML, ``qemu.conf``, directory listings); the daemon
(:mod:`vmcrash.capture.adopt`) and ``vmcrash doctor`` feed them what they read from libvirt.

The rule, per domain, from its *live* XML (the action libvirt applies to this QEMU process):

==================================  ======================  ==========================================
``<on_crash>``                      owner                   what vmcrash does
==================================  ======================  ==========================================
``preserve``                        vmcrash                 its own pipeline: dump, recover, clock, ...
``coredump-restart``                libvirt (dumps)         adopt libvirt's dump; clock after its reset
``coredump-destroy``                libvirt (dumps)         adopt libvirt's dump
``restart`` / ``rename-restart``    libvirt (no dump)       record the panic; clock after its reset
``destroy`` (also when absent)      libvirt (no dump)       record the panic
==================================  ======================  ==========================================

libvirt 9.0 facts this module encodes (checked against the lab's libvirt 9.0.0 / QEMU 7.2):

* the automatic dump is a memory-only dump in QEMU's ELF format (``qemu.conf`` has no key for
  its format; only ``auto_dump_path`` and ``auto_dump_bypass_cache``), written to
  ``<auto_dump_path>/<id>-<name>-<YYYY-MM-DD-HH:MM:SS>``, 0600 root, where ``<name>`` is the
  domain name cut to 20 characters (``virDomainDefGetShortName``) and the time is libvirtd's
  local time when the dump started;
* during the dump the domain is ``crashed (panicked)`` and holds an async job (operation
  ``dump``); with ``coredump-restart`` libvirt then resets the *same* QEMU process
  (``running (crashed)``), with ``coredump-destroy`` it stops it (``shut off (crashed)``);
* a libvirtd restart in the middle of the dump loses the pending action: QEMU finishes the file,
  but the domain stays ``crashed (panicked)`` with no job.
"""

from __future__ import annotations

import enum
import re
import xml.etree.ElementTree as ET
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone

from vmcrash.errors import BadDataError

__all__ = [
    "DEFAULT_AUTO_DUMP_PATH",
    "SHORT_NAME_MAX",
    "OnCrash",
    "Owner",
    "CrashOwnership",
    "AutoDumpFile",
    "on_crash_of",
    "decide",
    "parse_qemu_conf_dump_path",
    "short_name_prefixes",
    "parse_auto_dump_name",
    "pick_auto_dump",
    "elf_expected_size",
    "freeze_explanation",
]

#: libvirt's default ``auto_dump_path``.
DEFAULT_AUTO_DUMP_PATH = "/var/lib/libvirt/qemu/dump"
#: ``VIR_DOMAIN_SHORT_NAME_MAX``: libvirt cuts the name in dump file names to this many characters.
SHORT_NAME_MAX = 20


class OnCrash(enum.Enum):
    """libvirt's ``<on_crash>`` actions (``virDomainLifecycleAction``)."""

    DESTROY = "destroy"
    RESTART = "restart"
    RENAME_RESTART = "rename-restart"
    PRESERVE = "preserve"
    COREDUMP_DESTROY = "coredump-destroy"
    COREDUMP_RESTART = "coredump-restart"

    @property
    def dumps(self) -> bool:
        """libvirt writes a dump of its own."""
        return self in (OnCrash.COREDUMP_DESTROY, OnCrash.COREDUMP_RESTART)

    @property
    def restarts(self) -> bool:
        """libvirt brings the guest back (a reset of the same QEMU process)."""
        return self in (OnCrash.RESTART, OnCrash.RENAME_RESTART, OnCrash.COREDUMP_RESTART)

    @property
    def destroys(self) -> bool:
        return self in (OnCrash.DESTROY, OnCrash.COREDUMP_DESTROY)


class Owner(enum.Enum):
    """Who handles a panic."""

    #: vmcrash's own pipeline (``on_crash=preserve``)
    VMCRASH = "vmcrash"
    #: libvirt dumps; vmcrash adopts the file
    LIBVIRT_DUMP = "libvirt-dump"
    #: libvirt acts without a dump; vmcrash records the panic (and fixes the clock after a restart)
    LIBVIRT = "libvirt"


@dataclass(frozen=True)
class CrashOwnership:
    """The decision for one domain. ``takeover``: the policy asks vmcrash to own the crash."""

    on_crash: OnCrash
    owner: Owner
    takeover: bool = False

    @property
    def adopts(self) -> bool:
        return self.owner is Owner.LIBVIRT_DUMP

    @property
    def needs_takeover(self) -> bool:
        """The policy wants vmcrash to own the crash but libvirt still does: switch the live action."""
        return self.takeover and self.owner is not Owner.VMCRASH

    def plan(self) -> str:
        """One line: what happens on a panic of this domain."""
        oc = self.on_crash.value
        if self.owner is Owner.VMCRASH:
            return "on_crash=preserve: vmcrash owns the crash (its own dump, recovery per policy, clock, triage)"
        if self.owner is Owner.LIBVIRT_DUMP:
            after = ("libvirt then resets the guest in place; vmcrash corrects its clock once the agent is "
                     "back" if self.on_crash.restarts else "libvirt then stops the guest")
            what = (f"on_crash={oc}: libvirt owns the crash and writes its own raw dump; vmcrash adopts "
                    f"that file (catalogue, triage, compaction, retention) and never dumps it again; {after}")
        else:
            after = ("libvirt resets the guest; vmcrash corrects its clock once the agent is back"
                     if self.on_crash.restarts else "libvirt stops the guest")
            what = (f"on_crash={oc}: libvirt owns the crash and keeps no dump (the memory is lost); "
                    f"vmcrash records the panic from the event; {after}")
        if self.takeover:
            what += ("; policy crash_owner=vmcrash: the daemon switches the live action to preserve when it "
                     "watches the domain (run `vmcrash doctor --fix` to make that permanent)")
        return what


def _parse(xml: str) -> ET.Element:
    try:
        return ET.fromstring(xml)
    except ET.ParseError as exc:
        raise BadDataError(f"domain XML does not parse: {exc}") from exc


def on_crash_of(xml: str) -> OnCrash:
    """The ``<on_crash>`` action of a domain XML; libvirt's default ``destroy`` when absent.

    :raises BadDataError: the XML does not parse, or names an action libvirt does not have.
    """
    text = (_parse(xml).findtext("on_crash") or "destroy").strip()
    try:
        return OnCrash(text)
    except ValueError as exc:
        raise BadDataError(f"unknown <on_crash> action {text[:40]!r}") from exc


def decide(xml: str, *, takeover: bool = False) -> CrashOwnership:
    """Who owns a crash of the domain whose (live) XML is ``xml``. Pure.

    ``takeover`` (policy ``crash_owner = "vmcrash"``) does not change the owner by itself: libvirt
    acts on the live action, so vmcrash owns the crash only once that action is ``preserve``
    (the daemon switches it); until then vmcrash adopts, so that it never races libvirt's job.
    """
    oc = on_crash_of(xml)
    if oc is OnCrash.PRESERVE:
        owner = Owner.VMCRASH
    elif oc.dumps:
        owner = Owner.LIBVIRT_DUMP
    else:
        owner = Owner.LIBVIRT
    return CrashOwnership(oc, owner, takeover)


# -- libvirt's dump file -------------------------------------------------------------------------

_CONF_LINE = re.compile(r'^\s*auto_dump_path\s*=\s*"((?:[^"\\]|\\.)*)"\s*(?:#.*)?$')


def parse_qemu_conf_dump_path(text: str) -> str:
    """``auto_dump_path`` from ``qemu.conf`` text (the last uncommented setting), else the default. Pure."""
    path = DEFAULT_AUTO_DUMP_PATH
    for line in text.splitlines():
        m = _CONF_LINE.match(line)
        if m and m.group(1).startswith("/"):
            path = m.group(1).replace('\\"', '"')
    return path


def short_name_prefixes(dom_id: int | None, name: str) -> list[bytes]:
    """File-name prefixes libvirt may use for ``name`` (``b"<id>-<short name>-"``), bytes. Pure.

    libvirt cuts the name to 20 characters when its locale decodes the name, else to 20 bytes
    (a non-ASCII name under the C locale); both are returned. With ``dom_id`` None the id part
    is left to the caller's pattern (``b"-<short name>-"`` is returned).
    """
    raw = name.encode("utf-8", "surrogateescape")
    shorts = [name[:SHORT_NAME_MAX].encode("utf-8", "surrogateescape"), raw[:SHORT_NAME_MAX]]
    ident = b"" if dom_id is None else str(dom_id).encode()
    out: list[bytes] = []
    for s in shorts:
        p = ident + b"-" + s + b"-"
        if p not in out:
            out.append(p)
    return out


_STAMP = re.compile(rb"^(\d{4})-(\d{2})-(\d{2})-(\d{2}):(\d{2}):(\d{2})$")
_ID = re.compile(rb"^([1-9]\d{0,9})-")


@dataclass(frozen=True)
class AutoDumpFile:
    """A file in libvirt's dump directory that belongs to a domain. ``started_s``: its name's time (UTC epoch)."""

    name: bytes
    dom_id: int
    started_s: float


def parse_auto_dump_name(filename: bytes, name: str, *, utc_offset_s: int,
                         dom_id: int | None = None) -> AutoDumpFile | None:
    """Parse ``<id>-<short name>-<YYYY-MM-DD-HH:MM:SS>`` for domain ``name``; None when not its file.

    ``utc_offset_s``: libvirtd's local-time offset from UTC (the name holds local time). Pure.
    """
    m = _ID.match(filename)
    if m is None or len(filename) > 512:
        return None
    file_id = int(m.group(1))
    if dom_id is not None and file_id != dom_id:
        return None
    rest = filename[m.end() - 1:]  # keeps the "-" before the short name
    for prefix in short_name_prefixes(None, name):
        if not rest.startswith(prefix):
            continue
        s = _STAMP.match(rest[len(prefix):])
        if s is None:
            continue
        try:
            y, mo, d, h, mi, sec = (int(g) for g in s.groups())
            local = datetime(y, mo, d, h, mi, sec, tzinfo=timezone(timedelta(seconds=utc_offset_s)))
        except ValueError:
            return None
        return AutoDumpFile(filename, file_id, local.timestamp())
    return None


def pick_auto_dump(filenames: list[bytes], name: str, *, panic_s: float | None, now_s: float,
                   utc_offset_s: int, dom_id: int | None, taken: set[bytes] | frozenset[bytes] = frozenset(),
                   slack_s: float = 5.0) -> AutoDumpFile | None:
    """The file libvirt wrote for the panic at ``panic_s`` (UTC epoch seconds), or None. Pure.

    A candidate names this domain (and its id when known), is not ``taken`` (already catalogued),
    and its time lies between the panic (less ``slack_s``: the name has 1 s resolution and the
    panic time is when the event arrived) and now (plus ``slack_s``). The earliest one wins: it is
    the dump libvirt started for this panic. With ``panic_s`` None (a panic found at start-up,
    its time unknown) the newest candidate wins.
    """
    best: AutoDumpFile | None = None
    for fn in filenames:
        if fn in taken:
            continue
        f = parse_auto_dump_name(fn, name, utc_offset_s=utc_offset_s, dom_id=dom_id)
        if f is None or f.started_s > now_s + slack_s:
            continue
        if panic_s is not None and f.started_s < panic_s - slack_s:
            continue
        if best is None or (f.started_s < best.started_s if panic_s is not None else f.started_s > best.started_s):
            best = f
    return best


def elf_expected_size(head: bytes) -> int | None:
    """The size a complete 64-bit little-endian ELF core has, from its header and program headers.

    ``head`` must hold the ELF header and the whole program-header table (QEMU writes them
    first). Returns None when ``head`` is not such an ELF or is too short. Pure; every field is
    bounded (at most 65535 program headers, offsets below 2**63).
    """
    import struct

    if len(head) < 64 or head[:4] != b"\x7fELF" or head[4] != 2 or head[5] != 1:
        return None
    e_phoff, = struct.unpack_from("<Q", head, 32)
    e_phentsize, e_phnum = struct.unpack_from("<HH", head, 54)
    if e_phentsize < 56 or e_phnum == 0 or e_phoff >= 1 << 32:
        return None
    end_of_table = e_phoff + e_phentsize * e_phnum
    if len(head) < end_of_table:
        return None
    size = end_of_table
    for i in range(e_phnum):
        off = e_phoff + i * e_phentsize
        _p_type, _flags, p_offset, _vaddr, _paddr, p_filesz = struct.unpack_from("<IIQQQQ", head, off)
        if p_offset >= 1 << 63 or p_filesz >= 1 << 63:
            return None
        size = max(size, p_offset + p_filesz)
    return size


def freeze_explanation(ownership: CrashOwnership, memory_bytes: int) -> str:
    """Why the freeze on a panic differs between libvirt's dump and vmcrash's own capture (RAM-sized)."""
    mib = memory_bytes // (1024 * 1024)
    own = (f"vmcrash's own capture (on_crash=preserve) streams the dump and leaves zero pages out, or "
           f"holds the image and restarts at once, so the guest is frozen only for the memory it "
           f"really used, not for all {mib} MiB")
    if ownership.owner is Owner.LIBVIRT_DUMP:
        return (f"freeze: libvirt keeps the guest frozen while it writes a full raw dump of all {mib} MiB "
                f"of RAM (zero pages included) before it {'resets' if ownership.on_crash.restarts else 'stops'} "
                f"it; {own}")
    if ownership.owner is Owner.LIBVIRT:
        return (f"freeze: libvirt {'resets' if ownership.on_crash.restarts else 'stops'} the guest at once "
                f"(no dump: the {mib} MiB are lost); {own}, and the dump is kept")
    return f"freeze: {own}"
