"""Compaction bookkeeping: which finished dumps wait for compaction, and what each run changed.

The work itself (a low-priority worker process that converts or rearranges a dump) is
:mod:`vmcrash.capture.compact`; this module moves a row's ``compact_state`` along
:class:`~vmcrash.store.states.CompactState`, amends the dump's sidecar and records the outcome.
A compaction interrupted by a killed daemon is ``running`` or ``pending`` and is run again.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from vmcrash.capture import files, retention, sidecar
from vmcrash.capture.compact import plan_compaction, run_compaction
from vmcrash.config import Config
from vmcrash.durable import fsync_path
from vmcrash.store.catalog import Catalog
from vmcrash.store.states import COMPACT_OPEN, CompactState

__all__ = ["CompactionResult", "Compactor", "queue_compaction", "wants_compaction"]


@dataclass(frozen=True)
class CompactionResult:
    """One compaction run: ``state`` the row's compaction state after it, ``detail`` the worker's JSON."""

    state: CompactState
    error: str | None = None
    detail: dict[str, Any] = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        return self.state is CompactState.DONE


def wants_compaction(compact_state: str | None) -> bool:
    """Whether a row's compaction still has work to do. Pure."""
    return compact_state in {s.value for s in COMPACT_OPEN}


def queue_compaction(catalog: Catalog, crash_id: int, why: str) -> None:
    """Mark a finished dump for background compaction."""
    catalog.update(crash_id, compact_state=CompactState.PENDING.value)
    catalog.log(crash_id, "compaction", why)


class Compactor:
    """Runs one crash's compaction and keeps its books. Thread-safe (one run per crash at a time is
    the caller's job: the daemon runs one compaction at a time)."""

    def __init__(self, cfg: Config, catalog: Catalog) -> None:
        self.cfg = cfg
        self.catalog = catalog

    def compact(self, crash_id: int) -> CompactionResult | None:
        """Compact a finished dump and record the outcome; None when there is nothing (left) to do."""
        row = self.catalog.get(crash_id)
        if row is None or not row.dump_path or not wants_compaction(row.compact_state):
            return None
        src = Path(row.dump_path)
        if not src.exists():
            self.catalog.update(crash_id, compact_state=CompactState.FAILED.value,
                                compact={"error": "dump file is gone"})
            return CompactionResult(CompactState.FAILED, "dump file is gone")
        plan = plan_compaction(src, row.dump_format or "elf", keep_elf=self.cfg.staging.keep_elf)
        if (row.capture or {}).get("compact_dst"):  # an adopted dump left in libvirt's directory
            plan = replace(plan, dst=Path(row.capture["compact_dst"]))  # type: ignore[index]
        self.catalog.update(crash_id, compact_state=CompactState.RUNNING.value)
        self.catalog.log(crash_id, "compaction", f"{plan.kind} {src.name} -> {plan.dst.name}")
        doc = run_compaction(plan, codec=self.cfg.staging.compact_codec, reserve_bytes=self.cfg.min_free_bytes,
                             exclude_free=self.cfg.staging.compact_exclude_free)
        if not doc.get("ok"):
            # killed (daemon stopping) or short of space: resumable; anything else: failed
            state = (CompactState.PENDING if doc.get("interrupted") else
                     CompactState.WAITING_SPACE if doc.get("retry") else CompactState.FAILED)
            self.catalog.update(crash_id, compact_state=state.value, compact=doc)
            self.catalog.log(crash_id, "compaction", f"{state.value}: {doc.get('error')}")
            return CompactionResult(state, str(doc.get("error")), doc)
        updates: dict[str, Any] = {"compact_state": CompactState.DONE.value, "compact_path": str(plan.dst),
                                   "compact": doc}
        changes: dict[str, Any] = {"compaction": doc}
        if plan.drop_src:
            sha = files.sha256_file(plan.dst)
            fsync_path(plan.dst)
            size = plan.dst.stat().st_size
            changes.update(original_file=src.name, original_sha256=row.dump_sha256, file=plan.dst.name,
                           size_bytes=size, allocated_bytes=retention.disk_usage_bytes(plan.dst), sha256=sha,
                           format="kdump-" + str(doc.get("codec")) if plan.kind == "convert" else row.dump_format)
            # the sidecar names the compacted file before the original goes
            sidecar.amend(row.sidecar_path, **changes)
            files.remove_quietly(plan.src)
            updates.update(dump_path=str(plan.dst), dump_size_bytes=size, dump_sha256=sha)
        else:
            sidecar.amend(row.sidecar_path, **changes)
        self.catalog.update(crash_id, **updates)
        self.catalog.log(crash_id, "compaction", f"done: {plan.dst.name}, {doc.get('output_bytes', 0) >> 20} MiB "
                                                 f"(ratio {doc.get('ratio')}), {doc.get('seconds')} s")
        return CompactionResult(CompactState.DONE, None, doc)
