"""Unit-file parsing and unit-name rules (pure functions, literal inputs)."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from vmcrash.guest.names import (
    escape_path,
    expand_specifiers,
    instance_of,
    is_template,
    is_valid_unit_name,
    prefix_dropin_names,
    slice_for,
    template_of,
    unit_type,
)
from vmcrash.guest.unitfile import decode_unit_bytes, parse_unit_text


def test_assignments_sections_and_line_numbers() -> None:
    text = ("# comment\n; other comment\n[Unit]\nDescription = My unit \nAfter=a.service b.service\n\n"
            "[Service]\nType=oneshot\n")
    parsed = parse_unit_text(text, "/x.service")
    assert [(a.section, a.key, a.value, a.line) for a in parsed.assignments] == [
        ("Unit", "Description", "My unit", 4),
        ("Unit", "After", "a.service b.service", 5),
        ("Service", "Type", "oneshot", 8),
    ]
    assert parsed.problems == () and not parsed.fatal


def test_continuation_lines_join_and_skip_comments_inside() -> None:
    text = "[Unit]\nAfter=a.service \\\n# a comment inside\n  b.service\nWants=c.service\n"
    parsed = parse_unit_text(text, "/x")
    assert [(a.key, a.value, a.line) for a in parsed.assignments] == [
        ("After", "a.service b.service", 2), ("Wants", "c.service", 5)]


def test_malformed_lines_are_reported_with_path_and_line_and_parsing_goes_on() -> None:
    text = "Orphan=1\n[Unit]\nno equals sign here\nbad key=1\nAfter=good.service\n"
    parsed = parse_unit_text(text, "/etc/systemd/system/x.service")
    assert [(p.line, p.path) for p in parsed.problems] == [(1, "/etc/systemd/system/x.service"),
                                                          (3, "/etc/systemd/system/x.service"),
                                                          (4, "/etc/systemd/system/x.service")]
    assert "outside of any section" in parsed.problems[0].message
    assert "missing '='" in parsed.problems[1].message
    assert str(parsed.problems[1]).startswith("/etc/systemd/system/x.service:3: ")
    assert [a.value for a in parsed.assignments] == ["good.service"]


def test_invalid_section_header_makes_the_file_fatal() -> None:
    parsed = parse_unit_text("[Unit\nAfter=x.service\n", "/x")
    assert parsed.fatal
    assert parsed.problems[0].line == 1 and "section header" in parsed.problems[0].message


def test_nul_and_bad_utf8_are_reported() -> None:
    text, problems = decode_unit_bytes(b"[Unit]\nDescription=caf\xe9\nAfter=a.service\n", "/x")
    assert [p.line for p in problems] == [2]
    parsed = parse_unit_text("[Unit]\nAfter=a\0b\nWants=c.service\n", "/x")
    assert [p.line for p in parsed.problems] == [2]
    assert [a.key for a in parsed.assignments] == ["Wants"]
    assert "After" in text


@given(st.text(max_size=400))
def test_parser_never_raises(text: str) -> None:
    parsed = parse_unit_text(text, "/fuzz")
    for a in parsed.assignments:
        assert a.line >= 1 and "=" not in a.key


@pytest.mark.parametrize(("name", "valid"), [
    ("nginx.service", True), ("getty@tty1.service", True), ("getty@.service", True),
    ("system-serial\\x2dgetty.slice", True), ("-.mount", True), ("foo", False), ("foo.unknown", False),
    ("@x.service", False), ("a b.service", False), ("x" * 250 + ".service", False),
])
def test_valid_unit_names(name: str, valid: bool) -> None:
    assert is_valid_unit_name(name) is valid


def test_templates_and_instances() -> None:
    assert unit_type("a@b.socket") == "socket"
    assert is_template("getty@.service") and not is_template("getty@tty1.service")
    assert template_of("getty@tty1.service") == "getty@.service"
    assert template_of("getty@.service") is None and template_of("cron.service") is None
    assert instance_of("serial-getty@ttyS0.service") == "ttyS0"


def test_escaping_and_slices_match_systemd() -> None:
    # values as systemd-escape and `systemctl show -p Slice` print them
    assert escape_path("/") == "-"
    assert escape_path("/var/lib/systemd/timers") == "var-lib-systemd-timers"
    assert escape_path("/run/foo-bar") == "run-foo\\x2dbar"
    assert slice_for("serial-getty@ttyS0.service") == "system-serial\\x2dgetty.slice"
    assert slice_for("getty@tty1.service") == "system-getty.slice"
    assert slice_for("nginx.service") == "system.slice"


def test_specifiers_and_prefix_dropins() -> None:
    assert expand_specifiers("dev-%i.device", "serial-getty@ttyS0.service") == "dev-ttyS0.device"
    assert expand_specifiers("%n %N %p %%", "a-b@c.service") == "a-b@c.service a-b@c a-b %"
    assert expand_specifiers("%H", "x.service") == "%H"
    assert prefix_dropin_names("foo-bar-baz.service") == ["foo-.service", "foo-bar-.service"]
