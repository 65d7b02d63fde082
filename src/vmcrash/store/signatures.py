"""Crashes grouped by signature (pure): "the same bug in 40 guests" as one group.

Input is :meth:`Catalog.signature_counts` (one row per signature, host and domain); output is one
:class:`SignatureGroup` per signature, most frequent first. Used by ``vmcrash list --by-signature``
and the web dashboard, so both print the same grouping.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

__all__ = ["SignatureGroup", "group_signatures", "signature_id"]


def signature_id(signature: str) -> str:
    """A short stable id of a signature for URLs: the first 16 hex digits of its SHA-256."""
    return hashlib.sha256(signature.encode("utf-8", "replace")).hexdigest()[:16]


@dataclass(frozen=True)
class SignatureGroup:
    """One signature and where it struck.

    :ivar per_host: host -> crashes. :ivar per_domain: (host, domain) -> crashes.
    :ivar first_ns, last_ns: host wall-clock ns of the first and the last panic.
    """

    signature: str
    crashes: int
    first_ns: int
    last_ns: int
    last_id: int
    per_host: dict[str, int] = field(default_factory=dict)
    per_domain: dict[tuple[str, str], int] = field(default_factory=dict)

    @property
    def id(self) -> str:
        return signature_id(self.signature)

    @property
    def hosts(self) -> int:
        return len(self.per_host)

    @property
    def domains(self) -> int:
        return len(self.per_domain)

    def to_dict(self) -> dict[str, Any]:
        return {"id": self.id, "signature": self.signature, "crashes": self.crashes, "hosts": self.hosts,
                "domains": self.domains, "first_ns": self.first_ns, "last_ns": self.last_ns,
                "last_id": self.last_id,
                "per_host": [{"host": h, "crashes": n} for h, n in sorted(self.per_host.items())],
                "per_domain": [{"host": h, "domain": d, "crashes": n}
                               for (h, d), n in sorted(self.per_domain.items())]}


def group_signatures(rows: Iterable[Mapping[str, Any]]) -> list[SignatureGroup]:
    """Fold per-(signature, host, domain) counts into groups; most crashes first, then newest."""
    acc: dict[str, dict[str, Any]] = {}
    for r in rows:
        sig = r["signature"]
        g = acc.setdefault(sig, {"crashes": 0, "first_ns": r["first_ns"], "last_ns": r["last_ns"],
                                 "last_id": r["last_id"], "per_host": {}, "per_domain": {}})
        n = int(r["crashes"])
        g["crashes"] += n
        g["first_ns"] = min(g["first_ns"], r["first_ns"])
        g["last_ns"] = max(g["last_ns"], r["last_ns"])
        g["last_id"] = max(g["last_id"], r["last_id"])
        host = str(r.get("host") or "")
        g["per_host"][host] = g["per_host"].get(host, 0) + n
        key = (host, str(r["domain"]))
        g["per_domain"][key] = g["per_domain"].get(key, 0) + n
    groups = [SignatureGroup(signature=s, **v) for s, v in acc.items()]
    groups.sort(key=lambda g: (-g.crashes, -g.last_ns, g.signature))
    return groups
