"""Numbers written by someone else (a guest, QEMU, libvirt, a URL, a config file), read strictly.

``str.isdigit`` also takes ``²`` and ``٣`` (which ``int`` then refuses or reads as another number),
and ``int`` refuses more than 4300 digits with a ValueError: every host-side reader of such a
number goes through :func:`ascii_int`, which imports nothing. (:mod:`vmcrash.guest` keeps its
own, as it must run alone inside a guest.)
"""

from __future__ import annotations

__all__ = ["ascii_int"]


def ascii_int(text: str, max_digits: int) -> int | None:
    """``text`` as a number of 1..``max_digits`` ASCII digits, else None. Pure."""
    if text.isascii() and text.isdigit() and len(text) <= max_digits:
        return int(text)
    return None
