"""The dashboard app in-process (Starlette's test client) on a catalogue built from real triage documents.

Pure-logic checks that need no browser: escaping in the server's HTML, headers, the token rules,
the API's shapes, the ``[web]`` config section. The browser tests (``test_web_browser.py``) do the
same against real lab crashes in Chromium.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from vmcrash.config import parse_config
from vmcrash.errors import ConfigError
from vmcrash.store.catalog import Catalog
from vmcrash.vmcore._signature import signature_from_triage
from vmcrash.web import WebSettings, create_app, load_token
from vmcrash.web.charts import Point, Series, chart_svg
from vmcrash.web.security import token_matches

pytestmark = pytest.mark.filterwarnings("ignore:.*httpx2.*")
TRIAGE = Path(__file__).parent / "triage"
EVIL = "g \"'><img src=x onerror=alert(2)><script>alert(1)</script>"
TOKEN = b"0123456789abcdef-token"


@pytest.fixture
def filled(tmp_path: Path) -> tuple[Path, Path, dict[str, int]]:
    dumps = tmp_path / "dumps"
    dumps.mkdir(mode=0o700)
    cat = Catalog(tmp_path / "cat.sqlite", host="host<i>1</i>")
    ids = {}
    for i, (name, domain) in enumerate((("sysrq-markup-comm", EVIL), ("sysrq", "plain"), ("oom", "oomer"))):
        cid = cat.new_crash(domain=domain, uuid=f"u{i}", domain_id=1, source="event", panic_ns=(i + 1) * 10**18)
        doc = json.loads((TRIAGE / f"{name}.json").read_text())
        doc["signature"] = signature_from_triage(doc)
        doc["dmesg_tail"] = ["[    8.483526] CPU: 0 PID: 94 Comm: <b id=pwn>X</b> Not tainted"]
        dump = dumps / f"d{i}.elf"
        dump.write_bytes(b"ELF" * 100)
        cat.update(cid, triage=doc, state="done", dump_path=str(dump), dump_size_bytes=300, dump_format="elf",
                   dump_sha256="ab" * 32, freeze_s=1.25 + i, recovery_action="restart", recovery_result="running",
                   clock={"before_ms": -5000.0 - i, "after_ms": 0.4, "synced": True})
        cat.record_clock_sync(domain=domain, uuid=f"u{i}", reason="crash", ok=True, before_ms=-5000.0 - i,
                              after_ms=0.4, crash_id=cid)
        ids[name] = cid
    outside = tmp_path / "secret.elf"
    outside.write_bytes(b"x")
    cat.update(ids["oom"], dump_path=str(outside))
    cat.close()
    return tmp_path / "cat.sqlite", dumps, ids


def client(catalog: Path, dumps: Path, token: bytes | None = TOKEN):  # type: ignore[no-untyped-def]
    from starlette.testclient import TestClient

    app = create_app(WebSettings(open_catalog=lambda: Catalog(catalog), dump_dir=dumps, token=token))
    return TestClient(app)


def test_guest_text_is_escaped_everywhere(filled) -> None:  # type: ignore[no-untyped-def]
    catalog, dumps, ids = filled
    with client(catalog, dumps) as c:
        for url in ("/", f"/crashes/{ids['sysrq-markup-comm']}", "/signatures", "/clock", "/nope"):
            html = c.get(url).text
            assert "<b id=pwn>" not in html and "<script>alert" not in html and "<img src=x" not in html
            assert "<i>1</i>" not in html
            assert "<script" not in html  # the pages carry no script at all
        page = c.get(f"/crashes/{ids['sysrq-markup-comm']}").text
        assert "Comm: &lt;b id=pwn&gt;X&lt;/b&gt;" in page
        assert "&lt;img src=x onerror=alert(2)&gt;&lt;script&gt;alert(1)&lt;/script&gt;" in page


def test_headers_on_every_response(filled) -> None:  # type: ignore[no-untyped-def]
    catalog, dumps, ids = filled
    with client(catalog, dumps) as c:
        for url in ("/", "/api/crashes", "/static/style.css", "/crashes/424242", "/api/crashes/424242"):
            r = c.get(url)
            assert "script-src 'none'" in r.headers["content-security-policy"]
            assert "frame-ancestors 'none'" in r.headers["content-security-policy"]
            assert r.headers["x-content-type-options"] == "nosniff"
        assert c.get("/crashes/424242").status_code == 404
        assert c.get("/api/crashes/424242").json() == {"error": "no crash #424242 in the catalogue"}
        assert c.get("/api/crashes?limit=0").status_code == 400
        assert c.get("/api/crashes?limit=abc").status_code == 400
        for hostile in ("²", "٣", "1" * 5000, "-1", "1e3"):
            assert c.get("/api/crashes", params={"limit": hostile}).status_code == 400, hostile


def test_api_documents(filled) -> None:  # type: ignore[no-untyped-def]
    catalog, dumps, ids = filled
    with client(catalog, dumps) as c:
        crashes = c.get("/api/crashes").json()
        assert [x["id"] for x in crashes] == sorted(ids.values(), reverse=True)
        assert {x["host"] for x in crashes} == {"host<i>1</i>"}
        one = c.get(f"/api/crashes/{ids['sysrq']}").json()
        assert one["panic_line"] == "Kernel panic - not syncing: sysrq triggered crash"
        assert one["same_signature_crashes"] == 2 and one["freeze_s"] == 2.25
        assert one["clock"] == {"before_ms": -5001.0, "after_ms": 0.4, "synced": True, "error": None}
        assert one["dump_files"][0]["sha256"] == "ab" * 32 and one["registers"]["rip"].startswith("0xffff")
        sigs = c.get("/api/signatures").json()
        assert [(s["crashes"], s["domains"]) for s in sigs] == [(2, 2), (1, 1)]
        by_sig = c.get(f"/api/crashes?signature={sigs[0]['id']}").json()
        assert sorted(x["id"] for x in by_sig) == sorted([ids["sysrq"], ids["sysrq-markup-comm"]])
        assert c.get("/api/crashes?signature=0000").status_code == 404
        clock = c.get("/api/clock").json()
        assert len(clock) == 3 and clock[0]["reason"] == "crash"


def test_download_rules(filled) -> None:  # type: ignore[no-untyped-def]
    catalog, dumps, ids = filled
    cid = ids["sysrq"]
    with client(catalog, dumps) as c:
        assert c.get(f"/crashes/{cid}/download").status_code == 401
        assert c.post(f"/crashes/{cid}/download", data={"file": "dump"}).status_code == 401
        assert c.post(f"/crashes/{cid}/download", data={"token": "wrong", "file": "dump"}).status_code == 403
        bearer = {"Authorization": "Bearer " + TOKEN.decode()}
        ok = c.get(f"/crashes/{cid}/download", headers=bearer)
        assert ok.status_code == 200 and ok.content == b"ELF" * 100
        assert "attachment" in ok.headers["content-disposition"] and ok.headers["cache-control"] == "no-store"
        form = c.post(f"/crashes/{cid}/download", data={"token": TOKEN.decode(), "file": "dump"})
        assert form.status_code == 200 and form.content == b"ELF" * 100
        assert c.get(f"/crashes/{cid}/download?file=compacted", headers=bearer).status_code == 404
        assert c.get(f"/crashes/{cid}/download?file=../etc", headers=bearer).status_code == 400
        # a catalogue path outside the dump directory is never served
        assert c.get(f"/crashes/{ids['oom']}/download", headers=bearer).status_code == 404
        assert c.post(f"/crashes/{cid}/download", content=b"token=" + b"x" * 9000,
                      headers={"content-type": "application/x-www-form-urlencoded"}).status_code == 413
    with client(catalog, dumps, token=None) as c:
        r = c.get(f"/crashes/{cid}/download", headers={"Authorization": "Bearer "})
        assert r.status_code == 403 and "disabled" in r.text
        assert "downloads are disabled" in c.get(f"/crashes/{cid}").text


def test_token_file_rules(tmp_path: Path) -> None:
    p = tmp_path / "token"
    p.write_text("  " + TOKEN.decode() + "\n")
    p.chmod(0o644)
    with pytest.raises(ConfigError, match="group or others"):
        load_token(p)
    p.chmod(0o600)
    assert load_token(p) == TOKEN
    p.write_text("short")
    with pytest.raises(ConfigError, match="16 to 4096"):
        load_token(p)
    with pytest.raises(ConfigError, match="cannot read"):
        load_token(tmp_path / "missing")
    assert token_matches(TOKEN, TOKEN.decode()) and token_matches(TOKEN, TOKEN + b"\n")
    assert not token_matches(TOKEN, TOKEN[:-1]) and not token_matches(None, "x") and not token_matches(TOKEN, None)
    assert not token_matches(b"", "")


def test_web_config_section() -> None:
    cfg = parse_config({"web": {"listen": "0.0.0.0:8080", "token_file": "/etc/vmcrash/web.token"}})
    assert cfg.web.listen == "0.0.0.0:8080" and cfg.web.token_file == "/etc/vmcrash/web.token"
    assert parse_config({}).web.listen == "127.0.0.1:9465" and parse_config({}).web.token_file == ""
    for bad, key in (({"listen": "9465"}, "web.listen"), ({"listen": "h:0"}, "web.listen"),
                     ({"token_file": "rel/token"}, "web.token_file"), ({"port": 1}, "web.port")):
        with pytest.raises(ConfigError, match=key.replace(".", r"\.")):
            parse_config({"web": bad})


def test_dns_rebinding_is_refused_on_localhost(filled) -> None:  # type: ignore[no-untyped-def]
    from starlette.testclient import TestClient

    from vmcrash.cli.web import allowed_hosts

    catalog, dumps, ids = filled
    assert allowed_hosts("127.0.0.1") == ("localhost", "127.0.0.1", "127.0.0.1") and allowed_hosts("0.0.0.0") == ("*",)
    app = create_app(WebSettings(open_catalog=lambda: Catalog(catalog), dump_dir=dumps,
                                 allowed_hosts=allowed_hosts("127.0.0.1")))
    with TestClient(app, base_url="http://127.0.0.1:9465") as c:
        assert c.get("/api/crashes").status_code == 200
        assert c.get("/api/crashes", headers={"host": "localhost:9465"}).status_code == 200
        r = c.get("/api/crashes", headers={"host": "attacker.example:9465"})
        assert r.status_code == 400 and r.headers["x-content-type-options"] == "nosniff"


def test_listen_parsing() -> None:
    from vmcrash.cli.web import parse_listen

    assert parse_listen("127.0.0.1:9465") == ("127.0.0.1", 9465)
    assert parse_listen("[::1]:80") == ("::1", 80)
    for bad in ("9465", ":80", "h:x", "h:70000"):
        with pytest.raises(ConfigError):
            parse_listen(bad)


def test_chart_escapes_and_empty_state() -> None:
    empty = chart_svg([], title="t<script>", y_unit="s")
    assert "nothing recorded yet" in empty and "<script>" not in empty and "t&lt;script&gt;" in empty
    svg = chart_svg([Series("<b>dom</b>", (Point(10**18, 1.0, "<i>x</i>", "/crashes/1"),
                                          Point(2 * 10**18, -2.0, "y"))),
                     Series("other", (Point(10**18, 3.0, "z"),))], title="T", y_unit="ms", zero_line=True)
    assert "<b>" not in svg and "&lt;b&gt;dom&lt;/b&gt;" in svg and "&lt;i&gt;x&lt;/i&gt;" in svg
    assert svg.count('class="mark"') == 3 and 'href="/crashes/1"' in svg and "style=" not in svg
    from vmcrash.web.views import clock_series

    series = clock_series([{"domain": "a", "at_ns": 2, "reason": "sweep", "before_ms": 150.0, "after_ms": 0.5},
                           {"domain": "a", "at_ns": 1, "reason": "after-crash", "before_ms": -4000.0, "after_ms": None},
                           {"domain": "b", "at_ns": 3, "reason": "resume", "before_ms": None, "after_ms": None}])
    assert [(s.name, [(p.x_ns, p.y, p.solid) for p in s.points]) for s in series] == [
        ("a", [(1, -4000.0, True), (2, 150.0, True), (2, 0.5, False)])]
