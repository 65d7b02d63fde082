"""Which catalogue a reading verb (``list``, ``show``) opens: the fleet catalogue when configured,
else (or when it is unreachable) this host's SQLite file."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from vmcrash.config import Config
from vmcrash.errors import StorageError
from vmcrash.store.catalog import Catalog

__all__ = ["Reader", "open_reader"]


@dataclass(frozen=True)
class Reader:
    """``catalog``: a Catalog or PgCatalog (same read methods); ``shared``: it holds several hosts;
    ``note``: one line to tell the user (fleet catalogue unreachable), or None."""

    catalog: Any
    shared: bool
    note: str | None = None


def open_reader(cfg: Config) -> Reader:
    """Open the catalogue to read. Never fails over a down fleet catalogue: falls back to the spool.

    :raises StorageError: the local catalogue cannot be opened either.
    """
    if cfg.fleet_url:
        from vmcrash.store.pg import PgCatalog

        try:
            return Reader(PgCatalog(cfg.fleet_url, connect_timeout_s=5), shared=True)
        except StorageError as exc:
            return Reader(Catalog(cfg.catalog_path, host=cfg.host_name), shared=False,
                          note=f"{exc}; showing this host's local copy")
    return Reader(Catalog(cfg.catalog_path, host=cfg.host_name), shared=False)
