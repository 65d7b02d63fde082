"""The dashboard in a real browser (Debian's Chromium through Playwright) on a catalogue of real lab crashes.

One real ``vmcrash watch`` daemon handles three 512 MiB lab guests: one whose *domain name* carries
markup and script and whose crashing shell renamed itself (``/proc/self/comm``) to ``<b id=pwn>X</b>``
before ``echo c > /proc/sysrq-trigger`` (so the markup is in the kernel's oops line, in the dump, in the
catalogue), a plain sysrq crash, and an OOM panic (``vm.panic_on_oom = 1``, a tmpfs filled). Then a real
``vmcrash web`` process serves that catalogue and Chromium looks at it.

Ground truth comes from outside the dashboard: the guests' serial consoles (what the kernel printed),
the dump files on disk (sizes, SHA-256), the catalogue's rows read with sqlite3, and the DOM.
Screenshots are saved to the directory the ``artifacts`` fixture prints.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import secrets
import shutil
import socket
import sqlite3
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest
from labdaemon import Daemon, done

from vmcrash.lab.guest import PANIC_LINE, GuestSpec, LabGuest, unique_name

pytestmark = pytest.mark.lab

COMM = "<b id=pwn>X</b>"  # 15 bytes: the kernel's TASK_COMM_LEN - 1
MARKUP_COMM_CRASH = f"printf '%s' '{COMM}' > /proc/self/comm; sleep 0.3; echo c > /proc/sysrq-trigger"
OOM_CRASH = ("echo 1 > /proc/sys/vm/panic_on_oom; mkdir -p /oom; mount -t tmpfs -o size=100% oom /oom; "
             "dd if=/dev/zero of=/oom/f bs=1M")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def remove_leftover(name: str) -> None:
    """Destroy and undefine ``name`` through a fresh connection (the session's may have died with libvirtd).

    The hostile-named guest does not match the lab's sweep pattern, so nothing else would remove it.
    """
    import libvirt

    from vmcrash.lab.guest import destroy_and_undefine

    try:
        conn = libvirt.open("qemu:///system")
    except libvirt.libvirtError:
        return
    try:
        destroy_and_undefine(conn.lookupByName(name))
    except libvirt.libvirtError:
        pass
    finally:
        conn.close()


def ms(value: float | None) -> str:
    """How the pages print an offset (``-`` when the agent gave none)."""
    return f"{value:+.1f} ms" if value is not None else "-"


def sha256_of(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(1 << 22):
            h.update(chunk)
    return h.hexdigest()


@dataclass
class Lab:
    url: str
    token: str
    config: Path
    catalog: Path
    dump_dir: Path
    evil: str
    plain: str
    oom: str
    ids: dict[str, int] = field(default_factory=dict)
    serial: dict[str, str] = field(default_factory=dict)

    def db(self, sql: str, *args: Any) -> list[tuple[Any, ...]]:
        con = sqlite3.connect(self.catalog)
        try:
            return con.execute(sql, args).fetchall()
        finally:
            con.close()


@pytest.fixture(scope="module")
def lab(hv: Any, lab_image: Any, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Lab]:
    base = unique_name()
    evil = f"{base} \"'><img src=x onerror=alert(2)><script>alert(1)<"  # libvirt refuses only '/' and newlines
    names = [evil, unique_name(), unique_name()]
    # no_timer_check: a busy TCG host can make the rebooted kernel's IO-APIC timer check fail (a panic at boot)
    spec = GuestSpec(memory_mib=512, extra_cmdline="no_timer_check")
    guests = [LabGuest(spec, hv=hv, image=lab_image, name=n, keep_serial=False) for n in names]
    guests[0].serial_path = guests[0].run_dir / f"{base}.serial"
    work = tmp_path_factory.mktemp("weblab")
    token = secrets.token_urlsafe(32)
    token_file = work / "token"
    token_file.write_text(token + "\n")
    token_file.chmod(0o600)
    d = Daemon(work / "daemon", f'[web]\ntoken_file = "{token_file}"\n'
               "[clock]\nsweep_interval_s = 0\nagent_wait_s = 180\n", watch=names)
    web: subprocess.Popen[bytes] | None = None
    try:
        d.start()
        for g in guests:
            g.start()
        for g in guests:
            g.wait_ready(240)
        guests[0].agent().exec("/bin/sh", ["-c", MARKUP_COMM_CRASH])
        guests[1].crash()
        guests[2].agent().exec("/bin/sh", ["-c", OOM_CRASH])
        lab = Lab(url="", token=token, config=d.config, catalog=d.catalog_path, dump_dir=d.dump_dir,
                  evil=evil, plain=names[1], oom=names[2])
        for g in guests:
            row = d.wait_row(g.name, lambda r: done(r) and r.compact_state in ("done", "failed")
                             and r.clock is not None, 300)[0]
            assert row.state == "done" and row.dump_path, (row.state, row.error)
            lab.ids[g.name] = row.id
            lab.serial[g.name] = g.serial_text()
        d.stop()
        for g in guests:
            g.cleanup()
        port = free_port()
        lab.url = f"http://127.0.0.1:{port}"
        log = open(work / "web.log", "wb")
        web = subprocess.Popen([sys.executable, "-m", "vmcrash.cli.main", "--config", str(d.config), "web",
                                "--listen", f"127.0.0.1:{port}"], stdout=log, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + 30
        while True:
            try:
                if httpx.get(f"{lab.url}/api/crashes", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            assert web.poll() is None, (work / "web.log").read_text()
            assert time.monotonic() < deadline, "vmcrash web did not answer within 30 s"
            time.sleep(0.2)
        yield lab
    finally:
        if web is not None:
            web.terminate()
            web.wait(10)
        d.close()
        for g in guests:
            g.cleanup()
            remove_leftover(g.name)
        shutil.rmtree(d.dump_dir, ignore_errors=True)  # 3 × 512 MiB of guest memory: not an artifact


class Watched:
    """A page whose dialogs, console errors and uncaught errors are collected (none may happen)."""

    def __init__(self, browser: Any) -> None:
        self.context = browser.new_context(accept_downloads=True, viewport={"width": 1360, "height": 900})
        self.page = self.context.new_page()
        self.problems: list[str] = []
        self.requests: list[str] = []
        self.page.on("request", lambda req: self.requests.append(req.url))
        self.page.on("dialog", lambda dlg: (self.problems.append(f"dialog: {dlg.message}"), dlg.dismiss()))
        self.page.on("console", lambda msg: self.problems.append(f"console {msg.type}: {msg.text}")
                     if msg.type == "error" else None)
        self.page.on("pageerror", lambda exc: self.problems.append(f"page error: {exc}"))

    def goto(self, url: str) -> Any:
        resp = self.page.goto(url)
        self.page.wait_for_load_state("load")
        return resp

    def assert_clean(self) -> None:
        # Nothing injected ran or even became an element.
        assert self.page.evaluate("document.getElementById('pwn')") is None
        assert self.page.locator("img").count() == 0
        assert self.page.locator("script").count() == 0
        assert self.problems == [], self.problems
        # every asset came from the dashboard itself (no CDN, no third party)
        origin = re.match(r"https?://[^/]+/", self.page.url)
        assert origin is not None and self.requests
        assert all(u.startswith(origin.group(0)) for u in self.requests), self.requests

    def close(self) -> None:
        self.context.close()


@pytest.fixture
def watched(browser: Any) -> Iterator[Watched]:
    w = Watched(browser)
    yield w
    w.close()


def test_overview_lists_hosts_domains_and_timeline_and_links_to_a_crash(lab: Lab, watched: Watched,
                                                                       artifacts: Path) -> None:
    page = watched.page
    watched.goto(lab.url + "/")
    assert page.title() == "Overview · vmcrash"
    total = lab.db("SELECT COUNT(*) FROM crashes")[0][0]
    assert total == 3 and page.locator("#total-crashes").inner_text() == "3"
    host = lab.db("SELECT DISTINCT host FROM crashes")[0][0]
    rows = page.locator("#domains tbody tr")
    assert rows.count() == 3
    texts = [rows.nth(i).inner_text() for i in range(3)]
    assert {t.split("\t")[1] for t in texts} == {lab.evil, lab.plain, lab.oom}  # the markup shown literally
    assert all(t.startswith(host) for t in texts)
    # the timeline: one mark per crash, each linked to its page
    marks = page.locator("#timeline svg circle.mark")
    assert marks.count() == 3
    hrefs = page.locator("#timeline svg a").evaluate_all("as => as.map(a => a.getAttribute('href'))")
    assert sorted(hrefs) == sorted(f"/crashes/{i}" for i in lab.ids.values())
    page.screenshot(path=str(artifacts / "overview.png"), full_page=True)
    watched.assert_clean()
    # click through to the crash of the hostile guest
    evil_id = lab.ids[lab.evil]
    page.locator("#recent tbody tr", has_text=lab.evil).locator("a.crash-link").click()
    page.wait_for_url(f"{lab.url}/crashes/{evil_id}")
    assert page.locator("#domain").inner_text() == lab.evil
    watched.assert_clean()


def test_crash_page_shows_the_kernel_report_literally(lab: Lab, watched: Watched, artifacts: Path) -> None:
    page = watched.page
    evil_id = lab.ids[lab.evil]
    watched.goto(f"{lab.url}/crashes/{evil_id}")
    serial = lab.serial[lab.evil]
    # the panic line, as the guest kernel printed it on its console
    shown = page.locator("#panic-line").inner_text()
    assert shown.startswith(PANIC_LINE) and re.search(r"\] " + re.escape(shown) + r"\r?\n", serial)
    # the oops names the process by its (hostile) comm: on the console and on the page, as text
    comm_line = next(line for line in serial.splitlines() if "Comm: " in line)
    assert f"Comm: {COMM} " in comm_line
    oops = page.locator("#oops").inner_text()
    assert comm_line.split("] ", 1)[1].strip() in oops
    assert page.locator("#oops b").count() == 0
    trace = page.locator("#trace").inner_text()
    assert "sysrq_handle_crash+0x16/0x20" in trace and "sysrq_handle_crash+0x16/0x20" in serial
    dmesg = page.locator("#dmesg").inner_text()
    assert f"Comm: {COMM}" in dmesg and "sysrq: Trigger a crash" in dmesg
    console = {line.rstrip("\r") for line in serial.splitlines()}
    tail = dmesg.splitlines()
    assert len(tail) >= 30 and all(line in console for line in tail), [x for x in tail if x not in console][:3]
    # freeze, recovery, clock, CPU, registers from the catalogue row
    (freeze_s, recovery, result, clock_json, cpu_sig) = lab.db(
        "SELECT freeze_s, recovery_action, recovery_result, clock_json, signature FROM crashes WHERE id = ?",
        evil_id)[0]
    assert freeze_s > 0 and page.locator("#freeze .num").inner_text() == f"{freeze_s:.2f} s"
    assert page.locator("#recovery .num").inner_text() == f"{recovery} → {result}" == "restart → running"
    clock = json.loads(clock_json)
    assert page.locator("#clock .num").inner_text() == f"{ms(clock.get('before_ms'))} → {ms(clock.get('after_ms'))}"
    assert page.locator("#cpu").inner_text() == "0"
    regs = page.locator("#registers").inner_text()
    assert re.search(r"rip\s+0xffffffff[0-9a-f]{8}", regs) and "cr3" in regs
    # dump files: name, size and sha256 agree with the files on disk
    files = page.locator("#files tbody tr")
    dump_path, compact_path = lab.db("SELECT dump_path, compact_path FROM crashes WHERE id = ?", evil_id)[0]
    dump_row = files.filter(has_text=Path(dump_path).name)
    assert "elf" in dump_row.inner_text()
    assert sha256_of(Path(dump_path)) in dump_row.inner_text()
    size_mib = Path(dump_path).stat().st_size / 1024**2
    assert f"{size_mib:.1f} MiB" in dump_row.inner_text()
    comp_row = files.filter(has_text="compacted")
    assert "done" in comp_row.inner_text() and Path(compact_path).name in comp_row.inner_text()
    assert page.locator("a.signature").inner_text() == cpu_sig
    page.screenshot(path=str(artifacts / "crash.png"), full_page=True)
    page.screenshot(path=str(artifacts / "crash-top.png"))  # what the first screen shows (README)
    watched.assert_clean()


def test_dump_download_needs_the_token(lab: Lab, watched: Watched, artifacts: Path) -> None:
    page = watched.page
    evil_id = lab.ids[lab.evil]
    dump_path, compact_path = (Path(p) for p in lab.db(
        "SELECT dump_path, compact_path FROM crashes WHERE id = ?", evil_id)[0])
    url = f"{lab.url}/crashes/{evil_id}/download"
    # no token at all, a wrong one, a near miss: refused, and no file comes
    assert page.request.post(url, form={"file": "dump"}).status == 401
    assert page.request.get(url).status == 401
    assert page.request.get(url, headers={"Authorization": "Bearer " + lab.token[:-1]}).status == 403
    watched.goto(f"{lab.url}/crashes/{evil_id}")
    form = page.locator("#files tbody tr", has_text="compacted").locator("form")
    form.locator("input[name=token]").fill("not-the-token-" + "x" * 20)
    form.locator("button").click()
    page.wait_for_load_state("load")
    assert page.locator("h1").inner_text() == "403" and page.locator("#error").inner_text() == "wrong token"
    page.screenshot(path=str(artifacts / "download-refused.png"))
    watched.problems = [p for p in watched.problems if "403" not in p]  # the refusal itself is logged as a 403
    # the right token through the page's form: the compacted file, byte for byte
    watched.goto(f"{lab.url}/crashes/{evil_id}")
    form = page.locator("#files tbody tr", has_text="compacted").locator("form")
    form.locator("input[name=token]").fill(lab.token)
    with page.expect_download() as info:
        form.locator("button").click()
    download = info.value
    assert download.suggested_filename == compact_path.name
    got = Path(download.path())
    assert got.stat().st_size == compact_path.stat().st_size and sha256_of(got) == sha256_of(compact_path)
    # and the dump itself with the token as a bearer header (what curl would do)
    h = hashlib.sha256()
    with httpx.stream("GET", url, headers={"Authorization": f"Bearer {lab.token}"}, timeout=120) as resp:
        assert resp.status_code == 200
        assert resp.headers["cache-control"] == "no-store"
        for chunk in resp.iter_bytes():
            h.update(chunk)
    assert h.hexdigest() == lab.db("SELECT dump_sha256 FROM crashes WHERE id = ?", evil_id)[0][0] \
        == sha256_of(dump_path)
    watched.assert_clean()


def test_signatures_group_the_two_sysrq_crashes_not_the_oom(lab: Lab, watched: Watched, artifacts: Path) -> None:
    page = watched.page
    watched.goto(lab.url + "/signatures")
    rows = page.locator("#signatures tbody tr")
    assert rows.count() == 2
    sysrq, oom = rows.nth(0).inner_text(), rows.nth(1).inner_text()
    assert sysrq.split("\t")[:3] == ["2", "1", "2"] and "sysrq triggered crash | sysrq_handle_crash" in sysrq
    assert lab.evil in sysrq and lab.plain in sysrq and lab.oom not in sysrq
    assert oom.split("\t")[:3] == ["1", "1", "1"] and "Out of memory" in oom and lab.oom in oom
    # the same grouping from the command line
    cli = subprocess.run([sys.executable, "-m", "vmcrash.cli.main", "--config", str(lab.config), "list",
                          "--by-signature", "--json"], capture_output=True, text=True, check=True)
    groups = json.loads(cli.stdout)
    assert [(g["crashes"], g["domains"]) for g in groups] == [(2, 2), (1, 1)]
    assert groups[0]["signature"] in sysrq and groups[1]["signature"] in oom
    page.screenshot(path=str(artifacts / "signatures.png"), full_page=True)
    rows.nth(0).locator("a.signature").click()
    page.wait_for_load_state("load")
    assert page.locator("#recent tbody tr").count() == 2
    watched.assert_clean()


def test_clock_page_charts_offsets_per_guest(lab: Lab, watched: Watched, artifacts: Path) -> None:
    page = watched.page
    watched.goto(lab.url + "/clock")
    syncs = lab.db("SELECT domain, before_ms, after_ms FROM clock_syncs ORDER BY id DESC")
    assert len(syncs) >= 3 and {s[0] for s in syncs} == {lab.evil, lab.plain, lab.oom}
    rows = page.locator("#syncs tbody tr")
    assert rows.count() == len(syncs)
    first = rows.nth(0).inner_text().split("\t")
    assert first[2] == syncs[0][0] and first[4] == ms(syncs[0][1]) and first[5] == ms(syncs[0][2])
    chart = page.locator("#clock-chart svg")
    assert chart.count() == 1 and chart.locator("circle.mark").count() == len([s for s in syncs if s[1] is not None])
    assert chart.locator("circle.ring").count() == len([s for s in syncs if s[1] is not None and s[2] is not None])
    assert lab.evil[:32] in (chart.text_content() or "")  # legend, as text
    page.screenshot(path=str(artifacts / "clock.png"), full_page=True)
    watched.assert_clean()


def test_json_api_and_security_headers(lab: Lab) -> None:
    crashes = httpx.get(lab.url + "/api/crashes").json()
    assert sorted(c["id"] for c in crashes) == sorted(lab.ids.values())
    evil_id = lab.ids[lab.evil]
    one = httpx.get(f"{lab.url}/api/crashes/{evil_id}").json()
    assert one["domain"] == lab.evil and any(f"Comm: {COMM}" in line for line in one["oops_lines"])
    assert one["panic_line"] == "Kernel panic - not syncing: sysrq triggered crash"
    assert {f["kind"] for f in one["dump_files"]} == {"dump", "compacted"}
    assert [s["crashes"] for s in httpx.get(lab.url + "/api/signatures").json()] == [2, 1]
    clock = httpx.get(lab.url + "/api/clock").json()
    assert len(clock) == lab.db("SELECT COUNT(*) FROM clock_syncs")[0][0]
    assert httpx.get(lab.url + "/api/crashes/999999").status_code == 404
    for path in ("/", f"/crashes/{evil_id}", "/signatures", "/clock", "/api/crashes", "/static/style.css",
                 "/nope"):
        r = httpx.get(lab.url + path)
        csp = r.headers["content-security-policy"]
        assert "script-src 'none'" in csp and "frame-ancestors 'none'" in csp and "unsafe-inline" not in csp
        assert r.headers["x-content-type-options"] == "nosniff"
        assert r.headers["x-frame-options"] == "DENY"
    # read-only: nothing but the download accepts anything but GET
    assert httpx.post(lab.url + "/api/crashes").status_code == 405
    assert httpx.delete(f"{lab.url}/crashes/{evil_id}").status_code == 405
    assert os.path.exists(lab.catalog)
