"""Configuration: one TOML file, every key with a sane default, validated at start.

Location: ``--config FILE`` on any verb, else ``$VMCRASH_CONFIG``, else ``/etc/vmcrash/vmcrash.toml``
(a missing default file means "all defaults"). A file with only ``dump_dir`` works.

Example::

    libvirt_uri = "qemu:///system"
    dump_dir = "/var/lib/vmcrash/dumps"
    catalog = "/var/lib/vmcrash/catalog.sqlite"     # or "sqlite:////abs/path.sqlite"
    max_parallel_dumps = 2
    min_free_mb = 1024                              # never fill the dump disk below this
    metrics_listen = ""                             # e.g. "127.0.0.1:9464" for Prometheus

    [retention]
    max_dumps_per_domain = 5                        # 0 = unlimited
    max_total_gb = 0                                # 0 = unlimited
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

    [domains."*"]                                   # policy tables keyed by name or glob
    watch = true
    dump = true
    format = "elf"                                  # elf | kdump-zlib | kdump-lzo | kdump-snappy
    recovery = "restart"                            # restart | reset | preserve | destroy
    capture = "auto"                                # auto | hold | copy | stream | direct (see README)

    [domains."db-*"]
    recovery = "reset"

Policy tables are merged: defaults, then every glob that matches (in file order), then the
exact name.
"""

from __future__ import annotations

import fnmatch
import os
import tomllib
from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from typing import Any

from vmcrash.errors import ConfigError

__all__ = [
    "DEFAULT_CONFIG_PATH",
    "DUMP_FORMATS",
    "RECOVERY_ACTIONS",
    "Config",
    "DomainPolicy",
    "Retention",
    "CrashLoop",
    "ClockPolicy",
    "Staging",
    "load_config",
    "parse_config",
]

DEFAULT_CONFIG_PATH = Path("/etc/vmcrash/vmcrash.toml")
#: Name prefix of throwaway lab domains (see :mod:`vmcrash.lab.guest`).
LAB_PREFIX = "vmcrash-lab-"

#: Dump formats QEMU offers through libvirt (lzo/snappy only when QEMU was built with them).
DUMP_FORMATS = ("elf", "kdump-zlib", "kdump-lzo", "kdump-snappy")
RECOVERY_ACTIONS = ("restart", "reset", "preserve", "destroy")
DUMP_MODES = ("stream", "direct")
#: Per-domain capture modes (``auto`` picks; see :mod:`vmcrash.capture.hold`).
CAPTURE_MODES = ("auto", "hold", "copy", "stream", "direct")


@dataclass(frozen=True)
class DomainPolicy:
    """What vmcrash does for one domain's panic."""

    watch: bool = True
    dump: bool = True
    format: str = "elf"
    recovery: str = "restart"
    #: auto | hold | copy | stream | direct; auto = hold when RAM is in a shared memfd/file and recovery
    #: is restart (memory guard permitting), else ``staging.mode`` (issue 10)
    capture: str = "auto"


@dataclass(frozen=True)
class Retention:
    """Limits on kept dumps; 0 means unlimited."""

    max_dumps_per_domain: int = 5
    max_total_gb: float = 0.0
    max_age_days: float = 0.0
    keep_min_per_domain: int = 1

    @property
    def max_total_bytes(self) -> int:
        return int(self.max_total_gb * 1024**3)


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


@dataclass(frozen=True)
class Staging:
    """How dumps are captured: ``stream`` (vmcrash reads QEMU's stream, zero pages become holes) or
    ``direct`` (libvirt writes the file). Staging in tmpfs when RAM allows (issue 7)."""

    mode: str = "stream"
    #: 2 = a reader thread and a writer thread (measured faster here, see bench/stream.py)
    stream_threads: int = 2
    tmpfs_dir: str = "/dev/shm"
    ram_headroom_mb: int = 2048
    #: "auto": stage in tmpfs when the page cache cannot absorb the dump without throttling and RAM
    #: allows; "always": whenever RAM allows; "never": straight to the dump dir.
    tmpfs: str = "auto"
    compact: bool = True
    compact_codec: str = "auto"
    #: leave the guest's free pages (buddy allocator) out of the compact file, like makedumpfile -d 16
    compact_exclude_free: bool = True
    keep_elf: bool = True
    #: capture ``hold``: keep this much MemAvailable with the recovered guest's whole RAM counted
    hold_headroom_mb: int = 1024
    #: at most this many crashed images held at once (more: stream)
    max_held_images: int = 2
    #: on SIGTERM, writing held images may take this long; then what is left is given up (recorded)
    hold_shutdown_s: float = 60.0
    #: write-behind bandwidth cap for held images (MiB/s of data read; 0 = unlimited): the guest is
    #: already running again, so the dump need not compete with it for disk and CPU
    hold_write_mib_s: float = 0.0


@dataclass(frozen=True)
class Config:
    """The whole configuration. ``path`` is where it came from (None: defaults only)."""

    path: Path | None = None
    libvirt_uri: str = "qemu:///system"
    dump_dir: Path = Path("/var/lib/vmcrash/dumps")
    catalog: str = "/var/lib/vmcrash/catalog.sqlite"
    max_parallel_dumps: int = 2
    min_free_mb: int = 1024
    shutdown_dump: str = "abort"
    metrics_listen: str = ""
    retention: Retention = field(default_factory=Retention)
    crash_loop: CrashLoop = field(default_factory=CrashLoop)
    clock: ClockPolicy = field(default_factory=ClockPolicy)
    staging: Staging = field(default_factory=Staging)
    #: (pattern, raw table) in file order; see :meth:`policy_for`.
    domains: tuple[tuple[str, tuple[tuple[str, Any], ...]], ...] = ()

    @property
    def catalog_path(self) -> Path:
        """The SQLite file of the catalogue (``sqlite:///`` URLs accepted)."""
        return Path(self.catalog.removeprefix("sqlite:///")) if self.catalog.startswith("sqlite:///") \
            else Path(self.catalog)

    @property
    def min_free_bytes(self) -> int:
        return self.min_free_mb * 1024 * 1024

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


# -- parsing ---------------------------------------------------------------------------------

_TOP_KEYS = {"libvirt_uri", "dump_dir", "catalog", "max_parallel_dumps", "min_free_mb", "shutdown_dump",
             "metrics_listen",
             "retention", "crash_loop", "clock", "staging", "domains"}


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
    values: dict[str, Any] = {}
    for key, value in table.items():
        if key not in known:
            raise ConfigError(f"unknown key (known: {', '.join(sorted(known))})", path=path,
                              key=f"{prefix}.{key}")
        default = known[key].default
        expected: type | tuple[type, ...] = (int, float) if isinstance(default, (int, float)) and not \
            isinstance(default, bool) else type(default)
        values[key] = _check_type(value, expected, path, f"{prefix}.{key}")
        if isinstance(default, int) and not isinstance(default, bool) and isinstance(value, float) \
                and key not in ("max_total_gb", "max_age_days", "window_minutes"):
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
    if "capture" in table and policy.capture not in CAPTURE_MODES:
        raise ConfigError(f"unknown capture mode {policy.capture!r} (one of {', '.join(CAPTURE_MODES)})",
                          path=path, key=f"{key}.capture")
    if policy.capture == "hold" and policy.recovery in ("reset", "preserve"):
        raise ConfigError(f"capture 'hold' cannot work with recovery {policy.recovery!r}: it keeps the "
                          "same QEMU process and its memory (use restart)", path=path, key=f"{key}.capture")
    return tuple(table.items())


def parse_config(doc: dict[str, Any], path: Path | None = None) -> Config:
    """Validate a parsed TOML document. :raises ConfigError: naming the file and the key."""
    p = str(path) if path else None
    for key in doc:
        if key not in _TOP_KEYS:
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
        elif "://" in catalog:
            raise ConfigError(f"unsupported database URL {catalog.split('://')[0]}:// (only sqlite)",
                              path=p, key="catalog")
        elif not Path(catalog).is_absolute():
            raise ConfigError("must be an absolute path", path=p, key="catalog")
        values["catalog"] = catalog
    if "max_parallel_dumps" in doc:
        n = _check_type(doc["max_parallel_dumps"], int, p, "max_parallel_dumps")
        if not 1 <= n <= 64:
            raise ConfigError("must be between 1 and 64", path=p, key="max_parallel_dumps")
        values["max_parallel_dumps"] = n
    if "min_free_mb" in doc:
        n = _check_type(doc["min_free_mb"], int, p, "min_free_mb")
        if n < 0:
            raise ConfigError("must not be negative", path=p, key="min_free_mb")
        values["min_free_mb"] = n
    if "shutdown_dump" in doc:
        mode = _check_type(doc["shutdown_dump"], str, p, "shutdown_dump")
        if mode not in ("abort", "finish"):
            raise ConfigError("must be 'abort' or 'finish'", path=p, key="shutdown_dump")
        values["shutdown_dump"] = mode
    if "metrics_listen" in doc:
        listen = _check_type(doc["metrics_listen"], str, p, "metrics_listen")
        if listen:
            host, sep, port = listen.rpartition(":")
            if not sep or not port.isdigit() or not 0 < int(port) < 65536:
                raise ConfigError(f"expected host:port, got {listen!r}", path=p, key="metrics_listen")
        values["metrics_listen"] = listen
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
        values["clock"] = _section(ClockPolicy, doc["clock"], p, "clock")
    if "staging" in doc:
        staging = _section(Staging, doc["staging"], p, "staging")
        if staging.mode not in DUMP_MODES:
            raise ConfigError(f"must be one of {', '.join(DUMP_MODES)}", path=p, key="staging.mode")
        if staging.tmpfs not in ("auto", "always", "never"):
            raise ConfigError("must be auto, always or never", path=p, key="staging.tmpfs")
        if staging.stream_threads not in (1, 2):
            raise ConfigError("must be 1 or 2", path=p, key="staging.stream_threads")
        values["staging"] = staging
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
