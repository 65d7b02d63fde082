"""The retention executor: the one place that deletes dumps, on plans made by :mod:`~vmcrash.capture.retention`.

Planning is pure (``retention.plan_space`` / ``plan_retention``); this room does the I/O around it:
it lists the finished dumps that still exist (from the catalogue, sizes from the disk), deletes what a
plan names — the dump, its compacted copy, its sidecar and any resumable compaction leftovers — and
records each deletion in the catalogue. It never deletes a dump that is being written (those have no
``dump_path`` yet, only a ``.partial`` temp file) and never a file the catalogue does not name.
"""

from __future__ import annotations

import logging
from pathlib import Path

from vmcrash.capture import files, retention
from vmcrash.config import Retention
from vmcrash.store.catalog import Catalog

__all__ = ["kept_dumps", "delete_dump", "apply_retention"]

log = logging.getLogger(__name__)


def kept_dumps(catalog: Catalog) -> list[retention.KeptDump]:
    """Finished dumps that still exist on disk, oldest first, each sized by the blocks it occupies
    (its compacted copy included). A row whose dump file is gone is not a kept dump."""
    out = []
    for row in catalog.dumps():
        if row.dump_path and Path(row.dump_path).exists():
            size = retention.disk_usage_bytes(Path(row.dump_path))
            if row.compact_path and row.compact_path != row.dump_path:
                size += retention.disk_usage_bytes(Path(row.compact_path))
            out.append(retention.KeptDump(row.id, row.uuid, Path(row.dump_path), size, row.dump_ended_ns or 0))
    return out


def delete_dump(catalog: Catalog, crash_id: int, why: str) -> list[Path]:
    """Delete crash ``crash_id``'s dump files and record it; return the paths that were removed."""
    row = catalog.get(crash_id)
    if row is None:
        return []
    removed: list[Path] = []
    # the dumps first, their sidecar last: a dump is never left without the sidecar that describes it
    for p in (row.dump_path, row.compact_path, row.sidecar_path):
        if p:
            for victim in (Path(p), Path(p + ".part"), Path(p + ".part.ckpt")):
                if files.remove_quietly(victim):
                    removed.append(victim)
    catalog.update(crash_id, dump_path=None, sidecar_path=None, compact_path=None)
    catalog.log(crash_id, "deleted", why)
    log.info("crash #%d: dump %s", crash_id, why)
    return removed


def apply_retention(catalog: Catalog, limits: Retention, now_ns: int) -> list[int]:
    """Delete the dumps that exceed ``limits``; return their crash ids."""
    doomed = retention.plan_retention(kept_dumps(catalog), limits, now_ns)
    for d in doomed:
        delete_dump(catalog, d.crash_id, "deleted by retention limits")
    return [d.crash_id for d in doomed]
