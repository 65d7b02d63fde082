"""The one sidecar writer: the JSON file that describes each final dump, and the order of publication.

A dump becomes visible under its final name only after its sidecar is on disk (:func:`publish`):
the complete temp file is fsynced, checksummed and triaged, the sidecar written atomically, and
only then is the dump renamed. So a final-named dump never exists without its sidecar, even for a
moment; a killed daemon can leave a sidecar without its dump (retention removes such orphans),
never the reverse. Later changes (recovery facts, compaction) go through :func:`amend`.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from vmcrash.capture import files, retention

__all__ = ["Sidecar", "publish", "amend", "read"]


@dataclass
class Sidecar:
    """What the sidecar of one dump says (times are ISO UTC strings, sizes bytes)."""

    crash_id: int
    domain: str
    uuid: str
    format: str | None
    file: str
    size_bytes: int
    allocated_bytes: int
    sha256: str
    panic_time: str | None = None
    panic_source: str | None = None
    dump_start: str | None = None
    dump_end: str | None = None
    dump_seconds: float | None = None
    freeze_seconds: float | None = None
    vmcoreinfo: bool | None = None
    capture: dict[str, Any] = field(default_factory=dict)
    recovery: dict[str, Any] | None = None
    triage_error: str | None = None
    #: facts only some dumps have (``path`` of an adopted file left in place, ``note``, ...)
    extra: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d.update(d.pop("extra"))
        return d


def describe(path: Path, **facts: Any) -> Sidecar:
    """A sidecar for the complete dump at ``path`` (size, allocation, checksum taken from the file)."""
    extra = facts.pop("extra", {})
    return Sidecar(size_bytes=path.stat().st_size, allocated_bytes=retention.disk_usage_bytes(path),
                   sha256=files.sha256_file(path), extra=dict(extra), **facts)


def publish(partial: Path, final: Path, sidecar_path: Path, doc: Sidecar) -> None:
    """Make a complete dump final: its sidecar first, then the dump's atomic rename.

    :raises StorageError: either write failed (the dump then stays a temp file, for the caller to remove).
    """
    files.write_sidecar(sidecar_path, doc.to_dict())
    files.finalize(partial, final)


def read(path: Path) -> dict[str, Any] | None:
    """A sidecar's content, or None when it is missing or unreadable."""
    try:
        doc = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    return doc if isinstance(doc, dict) else None


def amend(path: Path | str | None, **changes: Any) -> bool:
    """Merge ``changes`` into an existing sidecar (atomically); False when there is none to amend.

    :raises StorageError: the write failed.
    """
    if not path:
        return False
    doc = read(Path(path))
    if doc is None:
        return False
    doc.update(changes)
    files.write_sidecar(Path(path), doc)
    return True
