"""Configuration: one TOML file, every key with a sane default, validated at start.

Location: ``--config FILE`` on any verb, else ``$VMCRASH_CONFIG``, else ``/etc/vmcrash/vmcrash.toml``
(a missing default file means "all defaults"). A file with only ``dump_dir`` works.

Example::

    libvirt_uri = "qemu:///system"
    dump_dir = "/var/lib/vmcrash/dumps"
    catalog = "/var/lib/vmcrash/catalog.sqlite"     # or "sqlite:////abs/path.sqlite", or a fleet
                                                    # catalogue "postgresql://user@db/vmcrash"
    catalog_spool = "/var/lib/vmcrash/catalog-spool.sqlite"  # with postgresql: this host's local copy
    host = ""                                       # the name this host's rows carry ("" = hostname)
    max_parallel_dumps = 2
    min_free_mib = 1024                             # never fill the dump disk below this
    metrics_listen = ""                             # e.g. "127.0.0.1:9464" for Prometheus
    run_dir = "/run/vmcrash"                        # one daemon per hypervisor: its lock lives here

    [retention]
    max_dumps_per_domain = 5                        # 0 = unlimited
    max_total_gib = 0                               # 0 = unlimited
    max_age_days = 0                                # 0 = unlimited
    keep_min_per_domain = 1                         # pruning for space never goes below this

    [crash_loop]
    max_panics = 3                                  # this many panics ...
    window_minutes = 10                             # ... within this window = a crash loop
    fallback = "preserve"                           # what to do with a looping domain instead

    [clock]
    sync_after_recovery = true
    target_ms = 5
    resume_threshold_s = 2.0                        # resync after pauses longer than this
    sweep_interval_s = 300                          # 0 = no periodic sweep
    sweep_threshold_ms = 100

    [web]                                           # vmcrash web: the read-only dashboard
    listen = "127.0.0.1:9465"
    token_file = ""                                 # dump downloads need this file's token
    [libvirt_dumps]                                 # domains that keep libvirt's coredump-* action
    place = "leave"                                 # or "move" into dump_dir
    dump_path = ""                                  # "" = qemu.conf's auto_dump_path

    [domains."*"]                                   # policy tables keyed by name or glob
    watch = true
    dump = true
    format = "elf"                                  # elf | kdump-zlib | kdump-lzo | kdump-snappy
    recovery = "auto"                               # auto (restart if held, else reset) | restart | reset
                                                    # | preserve | destroy
    crash_owner = "auto"                            # auto (follow <on_crash>) | vmcrash (take over)
    capture = "auto"                                # auto | hold | copy | stream | direct (see README)

    [domains."db-*"]
    recovery = "reset"

    [[notify]]                                      # a webhook per crash, once triage is done
    url = "https://hooks.example.net/vmcrash"
    secret = ""                                     # HMAC-SHA256 of the body in X-Vmcrash-Signature
    timeout_s = 5
    max_attempts = 10                               # then given up (recorded in the catalogue)

Policy tables are merged: defaults, then every glob that matches (in file order), then the
exact name.

Keys say their unit (``_mib``, ``_gib``, ``_s``, ``_ms``). The names they had before
(:data:`RENAMED_KEYS`: ``min_free_mb``, ``max_total_gb``, ``ram_headroom_mb``, ``hold_headroom_mb``)
are still read with the same meaning, with one deprecation line in the log; a file naming both the
old and the new key is refused.
"""

from __future__ import annotations

import fnmatch
import logging
import os
import socket
import tomllib
from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from typing import Any

from vmcrash.decimal_text import ascii_int
from vmcrash.errors import ConfigError

log = logging.getLogger(__name__)

__all__ = [
    "DEFAULT_CONFIG_PATH",
    "DUMP_FORMATS",
    "RENAMED_KEYS",
    "RECOVERY_ACTIONS",
    "Config",
    "DomainPolicy",
    "Retention",
    "CrashLoop",
    "ClockPolicy",
    "Staging",
    "Web",
    "LibvirtDumps",
    "load_config",
    "parse_config",
    "split_host_port",
]

DEFAULT_CONFIG_PATH = Path("/etc/vmcrash/vmcrash.toml")
#: Name prefix of throwaway lab domains, ``vmcrash-lab-<pid>-<n>-<hex4>`` (made by
#: :func:`vmcrash.lab.guest.unique_name`); a daemon watches them only when named exactly.
LAB_PREFIX = "vmcrash-lab-"

#: Dump formats QEMU offers through libvirt (lzo/snappy only when QEMU was built with them).
DUMP_FORMATS = ("elf", "kdump-zlib", "kdump-lzo", "kdump-snappy")
RECOVERY_ACTIONS = ("auto", "restart", "reset", "preserve", "destroy")
DUMP_MODES = ("stream", "direct")
CRASH_OWNERS = ("auto", "vmcrash")
#: Per-domain capture modes (``auto`` picks; see :mod:`vmcrash.capture.hold`).
CAPTURE_MODES = ("auto", "hold", "copy", "stream", "direct")


@dataclass(frozen=True)
class DomainPolicy:
    """What vmcrash does for one domain's panic."""

    watch: bool = True
    dump: bool = True
    format: str = "elf"
    recovery: str = "auto"
    #: "auto": libvirt owns a crash when the domain's live <on_crash> is not preserve (vmcrash adopts
    #: its dump or records the panic); "vmcrash": the daemon switches the live action to preserve
    #: (issue 16, :mod:`vmcrash.host.crash_owner`)
    crash_owner: str = "auto"
    #: auto | hold | copy | stream | direct; auto = hold when RAM is in a shared memfd/file and the
    #: recovery starts a fresh QEMU (restart, destroy or auto), else copy when the recovery still needs
    #: the memory taken first, memory guard permitting, else ``staging.mode`` (issue 10)
    capture: str = "auto"


@dataclass(frozen=True)
class LibvirtDumps:
    """Dumps libvirt writes itself (``on_crash=coredump-*``) and vmcrash adopts (issue 16).

    ``place``: ``leave`` the file where libvirt wrote it, or ``move`` it into ``dump_dir``.
    ``dump_path``: libvirt's ``auto_dump_path``; empty = read it from ``qemu_conf``.
    ``job_wait_s``: how long to wait for libvirt's dump job; 0 = 60 s plus 30 s per GiB of RAM.
    """

    place: str = "leave"
    dump_path: str = ""
    qemu_conf: str = "/etc/libvirt/qemu.conf"
    job_wait_s: float = 0.0


@dataclass(frozen=True)
class Retention:
    """Limits on kept dumps; 0 means unlimited."""

    max_dumps_per_domain: int = 5
    max_total_gib: float = 0.0
    max_age_days: float = 0.0
    keep_min_per_domain: int = 1

    @property
    def max_total_bytes(self) -> int:
        return int(self.max_total_gib * 1024**3)


@dataclass(frozen=True)
class CrashLoop:
    """``max_panics`` panics within ``window_minutes`` = a crash loop: no more dumps, ``fallback``."""

    max_panics: int = 3
    window_minutes: float = 10.0
    fallback: str = "preserve"


@dataclass(frozen=True)
class ClockPolicy:
    """Guest clock correction after freezes."""

    sync_after_recovery: bool = True
    target_ms: float = 5.0
    resume_threshold_s: float = 2.0
    sweep_interval_s: float = 300.0
    sweep_threshold_ms: float = 100.0
    agent_wait_s: float = 90.0
    #: freeze resyncs (restores, snapshots, host resume): agent calls in flight at most
    max_parallel_syncs: int = 8
    #: how often the daemon checks whether the host slept (seconds; 0 = off)
    host_sleep_check_s: float = 2.0


@dataclass(frozen=True)
class Staging:
    """How dumps are captured: ``stream`` (vmcrash reads QEMU's stream, zero pages become holes) or
    ``direct`` (libvirt writes the file). Staging in tmpfs when RAM allows (issue 7)."""

    mode: str = "stream"
    #: 2 = a reader thread and a writer thread (measured faster here, see bench/stream.py)
    stream_threads: int = 2
    tmpfs_dir: str = "/dev/shm"
    ram_headroom_mib: int = 2048
    #: "auto": stage in tmpfs when the page cache cannot absorb the dump without throttling and RAM
    #: allows; "always": whenever RAM allows; "never": straight to the dump dir.
    tmpfs: str = "auto"
    compact: bool = True
    compact_codec: str = "auto"
    #: leave the guest's free pages (buddy allocator) out of the compact file, like makedumpfile -d 16
    compact_exclude_free: bool = True
    keep_elf: bool = True
    #: capture ``hold``: keep this much MemAvailable with the recovered guest's whole RAM counted
    hold_headroom_mib: int = 1024
    #: at most this many crashed images held at once (more: stream)
    max_held_images: int = 2
    #: on SIGTERM, writing held images may take this long; then what is left is given up (recorded)
    hold_shutdown_s: float = 60.0
    #: write-behind bandwidth cap for held images (MiB/s of data read; 0 = unlimited): the guest is
    #: already running again, so the dump need not compete with it for disk and CPU
    hold_write_mib_s: float = 0.0


@dataclass(frozen=True)
class Web:
    """``vmcrash web``: where the dashboard listens, and the file holding the dump-download token
    (empty: downloads are refused)."""

    listen: str = "127.0.0.1:9465"
    token_file: str = ""


@dataclass(frozen=True)
class NotifyTarget:
    """A ``[[notify]]`` webhook: one JSON document per handled crash."""

    url: str = ""
    #: when set, ``X-Vmcrash-Signature: sha256=<hex HMAC of the body>``
    secret: str = ""
    timeout_s: float = 5.0
    max_attempts: int = 10
    #: first retry delay; doubles per attempt up to max_backoff_s
    backoff_s: float = 1.0
    max_backoff_s: float = 300.0

    @property
    def name(self) -> str:
        """How the outbox names this target (the URL without credentials or query)."""
        from urllib.parse import urlsplit

        u = urlsplit(self.url)
        return f"{u.scheme}://{u.hostname or ''}{':' + str(u.port) if u.port else ''}{u.path}"


@dataclass(frozen=True)
class Config:
    """The whole configuration. ``path`` is where it came from (None: defaults only)."""

    path: Path | None = None
    libvirt_uri: str = "qemu:///system"
    dump_dir: Path = Path("/var/lib/vmcrash/dumps")
    catalog: str = "/var/lib/vmcrash/catalog.sqlite"
    max_parallel_dumps: int = 2
    min_free_mib: int = 1024
    shutdown_dump: str = "abort"
    metrics_listen: str = ""
    #: where the one-daemon-per-hypervisor and per-crash locks live (see capture/daemon_lock.py)
    run_dir: Path = Path("/run/vmcrash")
    #: with a postgresql:// catalogue: the local SQLite copy the daemon writes and replicates from
    catalog_spool: str = "/var/lib/vmcrash/catalog-spool.sqlite"
    #: the name every catalogue row of this host carries ("" = socket.gethostname())
    host: str = ""
    notify: tuple[NotifyTarget, ...] = ()
    retention: Retention = field(default_factory=Retention)
    crash_loop: CrashLoop = field(default_factory=CrashLoop)
    clock: ClockPolicy = field(default_factory=ClockPolicy)
    staging: Staging = field(default_factory=Staging)
    web: Web = field(default_factory=Web)
    libvirt_dumps: LibvirtDumps = field(default_factory=LibvirtDumps)
    #: (pattern, raw table) in file order; see :meth:`policy_for`.
    domains: tuple[tuple[str, tuple[tuple[str, Any], ...]], ...] = ()

    @property
    def catalog_path(self) -> Path:
        """The SQLite file of the catalogue (``sqlite:///`` URLs accepted); with a fleet catalogue,
        the local spool the daemon writes."""
        if self.fleet_url:
            return Path(self.catalog_spool)
        return Path(self.catalog.removeprefix("sqlite:///")) if self.catalog.startswith("sqlite:///") \
            else Path(self.catalog)

    @property
    def fleet_url(self) -> str | None:
        """The ``postgresql://`` URL of a shared fleet catalogue, or None for a local SQLite one."""
        return self.catalog if self.catalog.startswith("postgresql://") else None

    @property
    def host_name(self) -> str:
        """The name this host's catalogue rows carry."""
        return self.host or socket.gethostname()

    @property
    def min_free_bytes(self) -> int:
        return self.min_free_mib * 1024 * 1024

    def has_exact(self, name: str) -> bool:
        """True when a policy table is keyed by exactly ``name`` (not a glob)."""
        return any(pattern == name for pattern, _ in self.domains)

    def watches(self, name: str) -> bool:
        """Whether the daemon handles domain ``name``'s panics.

        Throwaway lab guests (``vmcrash-lab-*``: selftest, tests, benchmarks) belong to whoever
        made them: they are watched only when a policy table names them exactly.
        """
        if name.startswith(LAB_PREFIX) and not self.has_exact(name):
            return False
        return self.policy_for(name).watch

    def policy_for(self, name: str) -> DomainPolicy:
        """The merged policy for domain ``name``: defaults, matching globs in order, exact name."""
        policy = DomainPolicy()
        exact: dict[str, Any] | None = None
        for pattern, items in self.domains:
            if pattern == name:
                exact = dict(items)
            elif any(c in pattern for c in "*?[") and fnmatch.fnmatchcase(name, pattern):
                policy = replace(policy, **dict(items))
        if exact is not None:
            policy = replace(policy, **exact)
        return policy


def split_host_port(value: str) -> tuple[str, int] | None:
    """``host:port`` (``[::1]:9465`` for IPv6) -> (host, port); None when the port is not 1..65535 in
    ASCII digits. The host may be empty (the caller decides what that means). Pure."""
    host, sep, port = value.rpartition(":")
    number = ascii_int(port, 5) if sep else None
    if number is None or not 0 < number < 65536:
        return None
    return host.removeprefix("[").removesuffix("]"), number


# -- parsing ---------------------------------------------------------------------------------

#: Keys renamed to say their unit: (section, old name) -> new name ("" = the top level). The old
#: name is still read with the same meaning (one deprecation line in the log); naming both is refused.
RENAMED_KEYS: dict[tuple[str, str], str] = {
    ("", "min_free_mb"): "min_free_mib",
    ("retention", "max_total_gb"): "max_total_gib",
    ("staging", "ram_headroom_mb"): "ram_headroom_mib",
    ("staging", "hold_headroom_mb"): "hold_headroom_mib",
}

_TOP_KEYS = {"libvirt_uri", "dump_dir", "catalog", "max_parallel_dumps", "min_free_mib", "shutdown_dump",
             "metrics_listen", "run_dir", "catalog_spool", "host", "notify",
             "retention", "crash_loop", "clock", "staging", "domains", "web", "libvirt_dumps"}


def _key_names(table: dict[str, Any], section: str, path: str | None) -> dict[str, str]:
    """The setting each key of ``table`` (of ``section``; "" = top level) names: itself, or the new
    name of a renamed key (logged once as deprecated).

    :raises ConfigError: the table names both the old and the new key of one setting.
    """
    names = {key: key for key in table}
    for (in_section, old), new in RENAMED_KEYS.items():
        if in_section != section or old not in table:
            continue
        written = f"{section}.{old}" if section else old
        if new in table:
            raise ConfigError(f"old name of {new}, which is set too: keep only {new}", path=path, key=written)
        log.warning("%s: %s is deprecated, read as %s (same meaning)", path or "configuration", written, new)
        names[old] = new
    return names


def _check_type(value: Any, expected: type | tuple[type, ...], path: str | None, key: str) -> Any:
    # bool is an int in Python; a TOML `true` where a number is expected is a mistake.
    if isinstance(value, bool) and expected is not bool and bool not in (
            expected if isinstance(expected, tuple) else (expected,)):
        raise ConfigError(f"expected a number, got {value!r}", path=path, key=key)
    if not isinstance(value, expected):
        names = " or ".join(t.__name__ for t in (expected if isinstance(expected, tuple) else (expected,)))
        raise ConfigError(f"expected {names}, got {type(value).__name__} {value!r}", path=path, key=key)
    return value


def _section(cls: type, table: Any, path: str | None, prefix: str) -> Any:
    if not isinstance(table, dict):
        raise ConfigError("expected a table", path=path, key=prefix)
    known = {f.name: f for f in fields(cls)}
    names = _key_names(table, prefix, path)
    values: dict[str, Any] = {}
    for key, value in table.items():
        name = names[key]
        if name not in known:
            raise ConfigError(f"unknown key (known: {', '.join(sorted(known))})", path=path,
                              key=f"{prefix}.{key}")
        default = known[name].default
        expected: type | tuple[type, ...] = (int, float) if isinstance(default, (int, float)) and not \
            isinstance(default, bool) else type(default)
        values[name] = _check_type(value, expected, path, f"{prefix}.{key}")
        if isinstance(default, int) and not isinstance(default, bool) and isinstance(value, float) \
                and name not in ("max_total_gib", "max_age_days", "window_minutes"):
            raise ConfigError(f"expected an integer, got {value!r}", path=path, key=f"{prefix}.{key}")
        if isinstance(value, (int, float)) and not isinstance(value, bool) and value < 0:
            raise ConfigError("must not be negative", path=path, key=f"{prefix}.{key}")
    return cls(**values)


def _policy_items(pattern: str, table: Any, path: str | None) -> tuple[tuple[str, Any], ...]:
    key = f"domains.{pattern!r}" if not pattern.isidentifier() else f"domains.{pattern}"
    policy = _section(DomainPolicy, table, path, key)
    if "format" in table and policy.format not in DUMP_FORMATS:
        raise ConfigError(f"unknown dump format {policy.format!r} (one of {', '.join(DUMP_FORMATS)})",
                          path=path, key=f"{key}.format")
    if "recovery" in table and policy.recovery not in RECOVERY_ACTIONS:
        raise ConfigError(f"unknown recovery action {policy.recovery!r} (one of "
                          f"{', '.join(RECOVERY_ACTIONS)})", path=path, key=f"{key}.recovery")
    if "crash_owner" in table and policy.crash_owner not in CRASH_OWNERS:
        raise ConfigError(f"unknown crash owner {policy.crash_owner!r} (one of {', '.join(CRASH_OWNERS)})",
                          path=path, key=f"{key}.crash_owner")
    if "capture" in table and policy.capture not in CAPTURE_MODES:
        raise ConfigError(f"unknown capture mode {policy.capture!r} (one of {', '.join(CAPTURE_MODES)})",
                          path=path, key=f"{key}.capture")
    if policy.capture == "hold" and policy.recovery in ("reset", "preserve"):
        raise ConfigError(f"capture 'hold' cannot work with recovery {policy.recovery!r}: it keeps the "
                          "same QEMU process and its memory (use restart)", path=path, key=f"{key}.capture")
    return tuple(table.items())


def _notify_target(table: Any, index: int, path: str | None) -> NotifyTarget:
    key = f"notify[{index}]"
    target = _section(NotifyTarget, table, path, key)
    if not target.url.startswith(("http://", "https://")) or len(target.url) > 2048:
        raise ConfigError("url must be an http:// or https:// URL", path=path, key=f"{key}.url")
    if not 0 < target.timeout_s <= 300:
        raise ConfigError("must be between 0 and 300 seconds", path=path, key=f"{key}.timeout_s")
    if not 1 <= target.max_attempts <= 1000:
        raise ConfigError("must be between 1 and 1000", path=path, key=f"{key}.max_attempts")
    return target


def parse_config(doc: dict[str, Any], path: Path | None = None) -> Config:
    """Validate a parsed TOML document. :raises ConfigError: naming the file and the key."""
    p = str(path) if path else None
    names = _key_names(doc, "", p)
    for key, name in names.items():
        if name not in _TOP_KEYS:
            raise ConfigError(f"unknown key (known: {', '.join(sorted(_TOP_KEYS))})", path=p, key=key)
    values: dict[str, Any] = {"path": path}
    if "libvirt_uri" in doc:
        values["libvirt_uri"] = _check_type(doc["libvirt_uri"], str, p, "libvirt_uri")
    if "dump_dir" in doc:
        dump_dir = Path(_check_type(doc["dump_dir"], str, p, "dump_dir"))
        if not dump_dir.is_absolute():
            raise ConfigError("must be an absolute path", path=p, key="dump_dir")
        values["dump_dir"] = dump_dir
    if "catalog" in doc:
        catalog = _check_type(doc["catalog"], str, p, "catalog")
        if catalog.startswith("sqlite://"):
            if not catalog.startswith("sqlite:////"):
                raise ConfigError("a sqlite URL needs an absolute path: sqlite:////var/lib/...",
                                  path=p, key="catalog")
        elif catalog.startswith("postgresql://"):
            pass  # validated when connecting (psycopg's own URL rules)
        elif "://" in catalog:
            raise ConfigError(f"unsupported database URL {catalog.split('://')[0]}:// (sqlite:// or "
                              "postgresql://)", path=p, key="catalog")
        elif not Path(catalog).is_absolute():
            raise ConfigError("must be an absolute path", path=p, key="catalog")
        values["catalog"] = catalog
    if "max_parallel_dumps" in doc:
        n = _check_type(doc["max_parallel_dumps"], int, p, "max_parallel_dumps")
        if not 1 <= n <= 64:
            raise ConfigError("must be between 1 and 64", path=p, key="max_parallel_dumps")
        values["max_parallel_dumps"] = n
    for key in [k for k in doc if names[k] == "min_free_mib"]:
        n = _check_type(doc[key], int, p, key)
        if n < 0:
            raise ConfigError("must not be negative", path=p, key=key)
        values["min_free_mib"] = n
    if "shutdown_dump" in doc:
        mode = _check_type(doc["shutdown_dump"], str, p, "shutdown_dump")
        if mode not in ("abort", "finish"):
            raise ConfigError("must be 'abort' or 'finish'", path=p, key="shutdown_dump")
        values["shutdown_dump"] = mode
    if "metrics_listen" in doc:
        listen = _check_type(doc["metrics_listen"], str, p, "metrics_listen")
        if listen:
            if split_host_port(listen) is None:
                raise ConfigError(f"expected host:port, got {listen!r}", path=p, key="metrics_listen")
        values["metrics_listen"] = listen
    if "run_dir" in doc:
        run_dir = Path(_check_type(doc["run_dir"], str, p, "run_dir"))
        if not run_dir.is_absolute():
            raise ConfigError("must be an absolute path", path=p, key="run_dir")
        values["run_dir"] = run_dir
    if "catalog_spool" in doc:
        spool = _check_type(doc["catalog_spool"], str, p, "catalog_spool")
        if not Path(spool).is_absolute():
            raise ConfigError("must be an absolute path", path=p, key="catalog_spool")
        values["catalog_spool"] = spool
    if "host" in doc:
        host = _check_type(doc["host"], str, p, "host")
        if len(host) > 253 or any(not (c.isalnum() or c in "-._") for c in host):
            raise ConfigError("a host name of letters, digits, '-', '.', '_' (at most 253)", path=p, key="host")
        values["host"] = host
    if "notify" in doc:
        targets = doc["notify"]
        if not isinstance(targets, list):
            raise ConfigError("expected [[notify]] tables", path=p, key="notify")
        values["notify"] = tuple(_notify_target(t, i, p) for i, t in enumerate(targets))
    if "retention" in doc:
        values["retention"] = _section(Retention, doc["retention"], p, "retention")
    if "crash_loop" in doc:
        loop = _section(CrashLoop, doc["crash_loop"], p, "crash_loop")
        if loop.fallback not in RECOVERY_ACTIONS:
            raise ConfigError(f"unknown action {loop.fallback!r} (one of {', '.join(RECOVERY_ACTIONS)})",
                              path=p, key="crash_loop.fallback")
        if loop.max_panics < 1:
            raise ConfigError("must be at least 1", path=p, key="crash_loop.max_panics")
        values["crash_loop"] = loop
    if "clock" in doc:
        clock = _section(ClockPolicy, doc["clock"], p, "clock")
        if not 1 <= clock.max_parallel_syncs <= 256:
            raise ConfigError("must be between 1 and 256", path=p, key="clock.max_parallel_syncs")
        values["clock"] = clock
    if "staging" in doc:
        staging = _section(Staging, doc["staging"], p, "staging")
        if staging.mode not in DUMP_MODES:
            raise ConfigError(f"must be one of {', '.join(DUMP_MODES)}", path=p, key="staging.mode")
        if staging.tmpfs not in ("auto", "always", "never"):
            raise ConfigError("must be auto, always or never", path=p, key="staging.tmpfs")
        if staging.stream_threads not in (1, 2):
            raise ConfigError("must be 1 or 2", path=p, key="staging.stream_threads")
        values["staging"] = staging
    if "web" in doc:
        web = _section(Web, doc["web"], p, "web")
        hp = split_host_port(web.listen)
        if hp is None or not hp[0]:
            raise ConfigError(f"expected host:port, got {web.listen!r}", path=p, key="web.listen")
        if web.token_file and not Path(web.token_file).is_absolute():
            raise ConfigError("must be an absolute path", path=p, key="web.token_file")
        values["web"] = web
    if "libvirt_dumps" in doc:
        ld = _section(LibvirtDumps, doc["libvirt_dumps"], p, "libvirt_dumps")
        if ld.place not in ("leave", "move"):
            raise ConfigError("must be 'leave' or 'move'", path=p, key="libvirt_dumps.place")
        for k in ("dump_path", "qemu_conf"):
            if getattr(ld, k) and not getattr(ld, k).startswith("/"):
                raise ConfigError("must be an absolute path", path=p, key=f"libvirt_dumps.{k}")
        values["libvirt_dumps"] = ld
    if "domains" in doc:
        tables = doc["domains"]
        if not isinstance(tables, dict):
            raise ConfigError("expected tables like [domains.\"web-*\"]", path=p, key="domains")
        values["domains"] = tuple((pattern, _policy_items(pattern, table, p))
                                  for pattern, table in tables.items())
    return Config(**values)


def load_config(path: str | os.PathLike[str] | None = None) -> Config:
    """Load the configuration from ``path``, ``$VMCRASH_CONFIG`` or the default location.

    :raises ConfigError: unreadable file, TOML syntax error, unknown key, wrong type or value.
    """
    explicit = path if path is not None else os.environ.get("VMCRASH_CONFIG") or None
    cfg_path = Path(explicit) if explicit else DEFAULT_CONFIG_PATH
    try:
        raw = cfg_path.read_bytes()
    except FileNotFoundError as exc:
        if explicit:
            raise ConfigError("file not found", path=str(cfg_path)) from exc
        return Config()
    except OSError as exc:
        raise ConfigError(f"cannot read: {exc.strerror}", path=str(cfg_path)) from exc
    try:
        doc = tomllib.loads(raw.decode("utf-8"))
    except UnicodeDecodeError as exc:
        raise ConfigError("not UTF-8 text", path=str(cfg_path)) from exc
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"TOML syntax error: {exc}", path=str(cfg_path)) from exc
    return parse_config(doc, cfg_path)
