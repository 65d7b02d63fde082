"""Unit names the way systemd spells them: types, templates and instances, escaping, specifiers.

Pure functions over strings; nothing here touches a file. The vocabulary is systemd's own
(``systemd.unit(5)``): a *template* is ``prefix@.type``, an *instance* ``prefix@instance.type``.
"""

from __future__ import annotations

import re

__all__ = [
    "UNIT_TYPES",
    "escape_path",
    "expand_specifiers",
    "instance_of",
    "instantiate",
    "is_template",
    "is_valid_unit_name",
    "prefix_dropin_names",
    "slice_for",
    "template_of",
    "unescape",
    "unit_type",
]

#: Unit types systemd knows (suffix without the dot).
UNIT_TYPES = ("service", "socket", "target", "device", "mount", "automount", "swap", "timer", "path",
              "slice", "scope")
_MAX_NAME = 255
_NAME_RE = re.compile(r"^[A-Za-z0-9:_.\\-]+(@[A-Za-z0-9:_.\\-]*)?\.(" + "|".join(UNIT_TYPES) + r")$")


def unit_type(name: str) -> str | None:
    """The type suffix of ``name`` (``"service"``), or None when it is not a unit type."""
    _, dot, suffix = name.rpartition(".")
    return suffix if dot and suffix in UNIT_TYPES else None


def is_valid_unit_name(name: str) -> bool:
    """True for a plain, template or instance unit name systemd would accept."""
    if not name or len(name) > _MAX_NAME or name.startswith("@"):
        return False
    return _NAME_RE.match(name) is not None


def is_template(name: str) -> bool:
    """``foo@.service`` is a template; ``foo@bar.service`` and ``foo.service`` are not."""
    stem, _, _ = name.rpartition(".")
    return stem.endswith("@")


def instance_of(name: str) -> str | None:
    """The instance part of ``foo@bar.service`` (``"bar"``); None for plain units and templates."""
    stem, _, _ = name.rpartition(".")
    if "@" not in stem:
        return None
    inst = stem.split("@", 1)[1]
    return inst or None


def template_of(name: str) -> str | None:
    """``foo@bar.service`` -> ``foo@.service``; None when ``name`` is not an instance."""
    stem, _, suffix = name.rpartition(".")
    if "@" not in stem or stem.endswith("@"):
        return None
    return stem.split("@", 1)[0] + "@." + suffix


def instantiate(template: str, instance: str) -> str:
    """``foo@.service`` + ``bar`` -> ``foo@bar.service``."""
    stem, _, suffix = template.rpartition(".")
    return f"{stem}{instance}.{suffix}"


def unescape(text: str) -> str:
    r"""Undo systemd's ``\xNN`` escaping (``systemd-escape -u`` without ``--path``)."""
    return re.sub(r"\\x([0-9a-fA-F]{2})", lambda m: chr(int(m.group(1), 16)), text)


def _escape_char(ch: str) -> str:
    return "".join(f"\\x{b:02x}" for b in ch.encode())


def escape_component(text: str) -> str:
    r"""systemd-escape of a string: ``/`` -> ``-``, other specials -> ``\xNN``."""
    out = []
    for i, ch in enumerate(text):
        if ch == "/":
            out.append("-")
        elif (ch.isascii() and (ch.isalnum() or ch in ":_")) or (ch == "." and i > 0):
            out.append(ch)
        else:
            out.append(_escape_char(ch))
    return "".join(out)


def escape_path(path: str) -> str:
    """``systemd-escape --path``: ``/var/lib`` -> ``var-lib``, ``/`` -> ``-``."""
    parts = [p for p in path.split("/") if p and p != "."]
    if not parts:
        return "-"
    return "-".join(escape_component(p) for p in parts)


def slice_for(name: str) -> str:
    """The default slice of a system unit: ``system.slice``, or ``system-<prefix>.slice`` for instances."""
    if instance_of(name) is None:
        return "system.slice"
    prefix = name.rpartition(".")[0].split("@", 1)[0]
    return f"system-{escape_component(prefix)}.slice"


def prefix_dropin_names(name: str) -> list[str]:
    """Dash-prefix drop-in directory stems for ``name``, most general first.

    ``foo-bar-baz.service`` -> ``["foo-.service", "foo-bar-.service"]`` (systemd >= 246).
    """
    stem, _, suffix = name.rpartition(".")
    stem = stem.split("@", 1)[0]
    parts = stem.split("-")
    out = []
    for i in range(1, len(parts)):
        if all(parts[:i]):
            out.append("-".join(parts[:i]) + "-." + suffix)
    return out


def expand_specifiers(value: str, name: str) -> str:
    """Expand the unit-name specifiers (``%n %N %p %P %i %I %j %J %f %%``) in ``value`` for unit ``name``.

    Other specifiers (host name, paths of the running system) are left as written.
    """
    if "%" not in value:
        return value
    stem, _, _ = name.rpartition(".")
    prefix, _, inst = stem.partition("@")
    last = prefix.rsplit("-", 1)[-1]
    table = {
        "n": name,
        "N": stem,
        "p": prefix,
        "P": unescape(prefix),
        "i": inst,
        "I": unescape(inst),
        "j": last,
        "J": unescape(last),
        "f": "/" + unescape(inst or prefix).replace("-", "/").lstrip("/"),
        "%": "%",
    }
    return re.sub(r"%(.)", lambda m: table.get(m.group(1), m.group(0)), value)
