"""Crash signatures on real triage output (lab guests: two sysrq crashes, one OOM panic) and their grouping.

The fixtures in ``triage/`` are the catalogue's triage documents of three real lab crashes (Debian
6.1 guest, 512 MiB, TCG): ``sysrq.json`` after ``echo c > /proc/sysrq-trigger`` from ``sh``,
``sysrq-markup-comm.json`` the same from a shell whose comm was set to ``<b id=pwn>X</b>``, and
``oom.json`` after filling a tmpfs with ``vm.panic_on_oom = 1``. Expected signatures are read off
the kernel's own call traces by hand.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from vmcrash.store.catalog import Catalog
from vmcrash.store.signatures import group_signatures, signature_id
from vmcrash.vmcore._oops import find_crash
from vmcrash.vmcore._signature import MAX_SIGNATURE_CHARS, crash_signature, signature_from_triage

TRIAGE = Path(__file__).parent / "triage"
SYSRQ_SIG = "sysrq triggered crash | sysrq_handle_crash < __handle_sysrq < write_sysrq_trigger < proc_reg_write"
OOM_SIG = ("Out of memory: system-wide panic_on_oom is enabled | out_of_memory < __alloc_pages_slowpath "
           "< __alloc_pages < __folio_alloc")


def triage(name: str) -> dict:  # type: ignore[type-arg]
    return json.loads((TRIAGE / f"{name}.json").read_text())


def test_two_sysrq_crashes_share_a_signature_an_oom_does_not() -> None:
    a, b, oom = (signature_from_triage(triage(n)) for n in ("sysrq", "sysrq-markup-comm", "oom"))
    assert a == b == SYSRQ_SIG
    assert oom == OOM_SIG
    # the two sysrq traces really differ (different '?' garbage frames), the comm too
    assert triage("sysrq")["call_trace"] != triage("sysrq-markup-comm")["call_trace"]
    assert triage("sysrq")["oops_lines"] != triage("sysrq-markup-comm")["oops_lines"]


def test_offsets_addresses_pids_and_clone_suffixes_do_not_matter() -> None:
    doc = triage("sysrq")
    other = json.loads(json.dumps(doc))
    for f in other["call_trace"]:
        f["offset"] += 0x10
        f["size"] += 0x100
    other["call_trace"][4]["function"] = "__handle_sysrq.isra.0"  # another build's clone name
    other["oops_lines"] = [line.replace("PID: 94", "PID: 4711").replace("CPU: 0", "CPU: 3")
                           for line in other["oops_lines"]]
    assert signature_from_triage(other) == SYSRQ_SIG


def test_a_different_frame_is_a_different_signature() -> None:
    doc = triage("sysrq")
    doc["call_trace"][3]["function"] = "sysrq_handle_reboot"
    assert signature_from_triage(doc) != SYSRQ_SIG


NULL_DEREF = """\
BUG: kernel NULL pointer dereference, address: 0000000000000008
#PF: supervisor read access in kernel mode
Oops: 0000 [#1] PREEMPT SMP NOPTI
CPU: 1 PID: 311 Comm: insmod Tainted: G           OE      6.1.0-56-amd64 #1  Debian 6.1.192-2
RIP: 0010:crashme_init+0x15/0x1000 [crashme]
Call Trace:
 <TASK>
 ? crashme_init+0x15/0x1000 [crashme]
 do_one_initcall+0x59/0x220
 do_init_module+0x4a/0x1f0
 __do_sys_finit_module+0xac/0x120
 do_syscall_64+0x58/0xc0
 entry_SYSCALL_64_after_hwframe+0x63/0xcd
 </TASK>
Modules linked in: crashme(OE+) virtio_net
Kernel panic - not syncing: Fatal exception""".splitlines()


def test_generic_panic_takes_the_oops_head_and_the_faulting_rip() -> None:
    r = find_crash(NULL_DEREF)
    panic = NULL_DEREF[r.panic_index] if r.panic_index is not None else None
    sig = crash_signature(panic, [NULL_DEREF[i] for i in r.oops_indices], r.call_trace)
    assert sig == ("Fatal exception: BUG: kernel NULL pointer dereference, address: ADDR | crashme_init [crashme] "
                   "< do_one_initcall < do_init_module < __do_sys_finit_module")
    # loaded elsewhere, another PID: same bug
    moved = [line.replace("0000000000000008", "0000000000000010").replace("311", "99") for line in NULL_DEREF]
    r2 = find_crash(moved)
    assert crash_signature(moved[r2.panic_index or 0], [moved[i] for i in r2.oops_indices], r2.call_trace) == sig


def test_nothing_to_sign_and_hostile_input() -> None:
    assert crash_signature(None, [], []) is None
    assert signature_from_triage({}) is None
    assert signature_from_triage({"panic_line": 5, "oops_lines": "x", "call_trace": [1, {"function": None}]}) is None
    long = crash_signature("Kernel panic - not syncing: " + "<script>" * 500, [], [])
    assert long is not None and len(long) <= MAX_SIGNATURE_CHARS


def test_triage_to_dict_carries_the_signature_and_dmesg_tail() -> None:
    from vmcrash.vmcore import Frame, Triage

    t = Triage(path="x", format="elf", file_size_bytes=0, memory_bytes=0, vmcoreinfo_present=True,
               panic_line="Kernel panic - not syncing: sysrq triggered crash",
               call_trace=(Frame("panic", 1, 2, None, True), Frame("sysrq_handle_crash", 1, 2, None, True)),
               dmesg_tail=("[    1.000000] hello",))
    doc = t.to_dict()
    assert doc["signature"] == "sysrq triggered crash | sysrq_handle_crash"
    assert doc["dmesg_tail"] == ["[    1.000000] hello"]


def test_catalogue_stores_signatures_and_groups_them(tmp_path: Path) -> None:
    cat = Catalog(tmp_path / "c.sqlite", host="hostA")
    ids = []
    for i, name in enumerate(("sysrq", "sysrq-markup-comm", "oom", "sysrq")):
        cid = cat.new_crash(domain=f"g{i % 3}", uuid=f"u{i}", domain_id=1, source="event", panic_ns=(i + 1) * 10**12)
        doc = triage(name)
        doc["signature"] = signature_from_triage(doc)
        cat.update(cid, triage=doc)
        ids.append(cid)
    other = Catalog(tmp_path / "c.sqlite", host="hostB")
    cid = other.new_crash(domain="g9", uuid="u9", domain_id=1, source="event", panic_ns=9 * 10**12)
    doc = triage("sysrq")
    doc["signature"] = signature_from_triage(doc)
    other.update(cid, triage=doc)
    groups = group_signatures(cat.signature_counts())
    assert [(g.signature, g.crashes, g.hosts, g.domains) for g in groups] == [
        (SYSRQ_SIG, 4, 2, 3), (OOM_SIG, 1, 1, 1)]
    assert groups[0].first_ns == 10**12 and groups[0].last_ns == 9 * 10**12 and groups[0].last_id == cid
    assert groups[0].per_domain == {("hostA", "g0"): 2, ("hostA", "g1"): 1, ("hostB", "g9"): 1}
    assert cat.signature_count(SYSRQ_SIG) == 4
    assert [r.id for r in cat.crashes_with_signature(OOM_SIG)] == [ids[2]]
    assert groups[0].to_dict()["id"] == signature_id(SYSRQ_SIG)


@pytest.fixture
def filled_config(tmp_path: Path) -> Path:
    cat = Catalog(tmp_path / "cat.sqlite", host="h1")
    for i, name in enumerate(("sysrq", "sysrq-markup-comm", "oom")):
        cid = cat.new_crash(domain=f"guest{i}", uuid=f"u{i}", domain_id=1, source="event", panic_ns=(i + 1) * 10**15)
        doc = triage(name)
        doc["signature"] = signature_from_triage(doc)
        cat.update(cid, triage=doc)
    cat.close()
    cfg = tmp_path / "vmcrash.toml"
    cfg.write_text(f'catalog = "{tmp_path / "cat.sqlite"}"\ndump_dir = "{tmp_path / "dumps"}"\n')
    return cfg


def test_list_by_signature(filled_config: Path) -> None:
    import subprocess
    import sys

    run = subprocess.run([sys.executable, "-m", "vmcrash.cli.main", "--config", str(filled_config), "list",
                          "--by-signature"], capture_output=True, text=True, check=True)
    lines = run.stdout.splitlines()
    assert lines[0].split() == ["CRASHES", "HOSTS", "DOMAINS", "FIRST", "(UTC)", "LAST", "(UTC)", "SIGNATURE"]
    assert lines[1].split()[:3] == ["2", "1", "2"] and lines[1].endswith(SYSRQ_SIG)
    assert lines[2].split()[:3] == ["1", "1", "1"] and lines[2].endswith(OOM_SIG)
    js = subprocess.run([sys.executable, "-m", "vmcrash.cli.main", "--config", str(filled_config), "list",
                         "--by-signature", "--json"], capture_output=True, text=True, check=True)
    doc = json.loads(js.stdout)
    assert [(g["signature"], g["crashes"]) for g in doc] == [(SYSRQ_SIG, 2), (OOM_SIG, 1)]
