"""Run the stdlib guest audit inside a running guest from the host, through the guest agent's guest-exec.

Nothing is installed in the guest: the guest package (``vmcrash/__init__.py``, ``errors.py``,
``guest/*.py``, all stdlib-only) travels as compressed JSON on the process's standard input, a
short bootstrap given to ``python3 -c`` imports it from memory (a meta path finder over that
dict), runs ``vmcrash.guest.cli.main`` and writes one compressed, base64 JSON document with its
exit code, stdout and stderr. Time is bounded twice: ``signal.alarm`` inside the guest and a
deadline on the host's polling of ``guest-exec-status``; output is bounded by the agent's reply
limit and a decompression limit.

Errors, one line each: :class:`~vmcrash.errors.AgentUnavailable` (no agent channel, agent not
running), :class:`~vmcrash.errors.EnvironmentProblem` (no python3 in the guest, the run timed
out), :class:`~vmcrash.errors.AgentProtocolError` (the guest answered garbage).
"""

from __future__ import annotations

import base64
import binascii
import json
import logging
import time
import zlib
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import libvirt

from vmcrash.errors import AgentProtocolError, AgentRefused, EnvironmentProblem, VmcrashError
from vmcrash.host.agent import Agent
from vmcrash.host.agent_protocol import parse_exec_status

__all__ = ["BOOTSTRAP", "GuestRun", "decode_result", "doctor_check", "guest_payload", "run_guest_cli"]

log = logging.getLogger(__name__)

#: Largest decompressed result accepted from the guest (the audit's JSON is tens of kB).
MAX_RESULT_BYTES = 4 << 20
#: Largest base64 output accepted in one guest-exec-status reply.
MAX_OUTPUT_BYTES = 1 << 20
_POLL_S = 0.25

#: Runs in the guest's python3 (3.7+ syntax on purpose: it must at least report an old interpreter).
BOOTSTRAP = r"""
import base64, importlib.abc, importlib.util, io, json, signal, sys, zlib
signal.alarm(int(sys.argv[1]))
def done(rc, out, err):
    doc = json.dumps({"rc": rc, "out": out, "err": err[-20000:]}).encode()
    sys.stdout.write("VMCRASH-RESULT " + base64.b64encode(zlib.compress(doc, 9)).decode() + "\n")
    sys.exit(0)
if sys.version_info < (3, 9):
    done(3, "", "guest python3 is %d.%d; vmcrash.guest needs 3.9 or newer" % sys.version_info[:2])
SRC = json.loads(zlib.decompress(sys.stdin.buffer.read()).decode())
class Finder(importlib.abc.MetaPathFinder, importlib.abc.Loader):
    def find_spec(self, name, path=None, target=None):
        key = name.replace(".", "/")
        for file, pkg in ((key + "/__init__.py", True), (key + ".py", False)):
            if file in SRC:
                return importlib.util.spec_from_loader(name, self, origin="vmcrash-host:" + file, is_package=pkg)
        return None
    def create_module(self, spec):
        return None
    def exec_module(self, module):
        file = module.__spec__.origin.split(":", 1)[1]
        module.__file__ = file
        exec(compile(SRC[file], file, "exec"), module.__dict__)
sys.meta_path.insert(0, Finder())
out, err = io.StringIO(), io.StringIO()
sys.stdout, sys.stderr = out, err
try:
    from vmcrash.guest.cli import main
    rc = main(sys.argv[2:])
except SystemExit as exc:
    rc = exc.code if isinstance(exc.code, int) else 2
except BaseException as exc:
    err.write("error: %s: %s\n" % (type(exc).__name__, str(exc)[:500]))
    rc = 2
sys.stdout, sys.stderr = sys.__stdout__, sys.__stderr__
done(rc, out.getvalue(), err.getvalue())
"""


@dataclass(frozen=True)
class GuestRun:
    """What the guest module printed and returned inside the guest."""

    exit_code: int
    out: str
    err: str
    seconds: float


def guest_payload(package_dir: Path | None = None) -> bytes:
    """The guest package as compressed JSON (``{"vmcrash/guest/audit.py": source, ...}``)."""
    pkg = package_dir or Path(__file__).resolve().parents[1]
    files = {"vmcrash/__init__.py": (pkg / "__init__.py").read_text(),
             "vmcrash/errors.py": (pkg / "errors.py").read_text()}
    for py in sorted((pkg / "guest").glob("*.py")):
        files[f"vmcrash/guest/{py.name}"] = py.read_text()
    return zlib.compress(json.dumps(files).encode(), 9)


def decode_result(out: bytes, *, domain: str | None = None) -> tuple[int, str, str]:
    """(exit code, stdout, stderr) from the bootstrap's output (pure; guest data, so validated).

    :raises AgentProtocolError: no result line, bad base64, too large, not the expected JSON.
    """
    text = out.decode("utf-8", "replace")
    line = next((ln for ln in text.splitlines() if ln.startswith("VMCRASH-RESULT ")), None)
    if line is None:
        raise AgentProtocolError(f"the guest printed no result ({text[:200]!r})", domain=domain)
    try:
        packed = base64.b64decode(line.split(" ", 1)[1], validate=True)
        inflater = zlib.decompressobj()
        raw = inflater.decompress(packed, MAX_RESULT_BYTES)
        if inflater.unconsumed_tail:
            raise AgentProtocolError(f"the guest's result exceeds {MAX_RESULT_BYTES} bytes", domain=domain)
        doc = json.loads(raw)
    except (binascii.Error, ValueError, RecursionError, zlib.error) as exc:
        raise AgentProtocolError(f"the guest's result is not valid: {exc}", domain=domain) from exc
    if (not isinstance(doc, dict) or isinstance(doc.get("rc"), bool) or not isinstance(doc.get("rc"), int)
            or not isinstance(doc.get("out"), str) or not isinstance(doc.get("err"), str)):
        raise AgentProtocolError("the guest's result has the wrong shape", domain=domain)
    return doc["rc"], doc["out"], doc["err"]


def run_guest_cli(agent: Agent, args: Sequence[str], *, timeout_s: float = 60.0,
                  python: str = "python3", payload: bytes | None = None) -> GuestRun:
    """Run ``python3 -m vmcrash.guest ARGS`` (from memory) in the guest of ``agent``; wait at most ``timeout_s``.

    :raises AgentUnavailable: no agent channel or no answer. :raises EnvironmentProblem: no python3
        in the guest, or no result in time. :raises AgentProtocolError: a malformed reply.
    """
    t0 = time.monotonic()
    agent.ping()
    data = payload if payload is not None else guest_payload()
    alarm_s = max(1, int(timeout_s))
    try:
        started = agent.command("guest-exec", {
            "path": python, "arg": ["-I", "-c", BOOTSTRAP, str(alarm_s), *args],
            "input-data": base64.b64encode(data).decode(), "capture-output": True}, timeout_s=10)
    except AgentRefused as exc:
        text = str(exc)
        if "No such file" in text or "Failed to execute" in text or "not found" in text:
            raise EnvironmentProblem(f"{agent.name}: the guest has no {python} to run the audit with "
                                     f"({text[:160]})") from exc
        raise
    if not isinstance(started, dict) or isinstance(started.get("pid"), bool) or not isinstance(started.get("pid"), int):
        raise AgentProtocolError("guest-exec: reply has no pid", domain=agent.name)
    pid = started["pid"]
    deadline = t0 + timeout_s + 5
    while True:
        status = parse_exec_status(agent.command("guest-exec-status", {"pid": pid}, timeout_s=10,
                                                 max_bytes=MAX_OUTPUT_BYTES * 2),
                                   domain=agent.name, max_output=MAX_OUTPUT_BYTES)
        if status.exited:
            break
        if time.monotonic() > deadline:
            raise EnvironmentProblem(f"{agent.name}: the guest audit did not finish in {timeout_s:.0f} s")
        time.sleep(_POLL_S)
    if status.exitcode not in (0, None) and not status.out:
        hint = "killed by its time limit" if status.exitcode in (-14, 142) else f"exit {status.exitcode}"
        raise EnvironmentProblem(f"{agent.name}: {python} in the guest failed ({hint}): "
                                 f"{status.err.decode('utf-8', 'replace')[-300:]!r}")
    rc, out, err = decode_result(status.out, domain=agent.name)
    return GuestRun(rc, out, err, time.monotonic() - t0)


def doctor_check(dom: libvirt.virDomain, *, timeout_s: float = 60.0) -> dict[str, Any]:
    """``vmcrash doctor --guest-audit``: the guest audit of a running domain as one doctor check."""
    name = dom.name()
    if not dom.isActive():
        return {"name": "guest-boot-order", "ok": True, "detail": "not running; not audited"}
    try:
        run = run_guest_cli(Agent(dom, timeout_s=10), ["audit", "--json"], timeout_s=timeout_s)
        doc = json.loads(run.out)
        findings = doc["findings"] if isinstance(doc, dict) and isinstance(doc.get("findings"), list) else None
    except VmcrashError as exc:
        return {"name": "guest-boot-order", "ok": False, "detail": f"not audited: {str(exc)[:200]}"}
    except (ValueError, KeyError, TypeError):
        return {"name": "guest-boot-order", "ok": False, "detail": f"{name}: the guest audit printed no JSON"}
    if findings is None:
        return {"name": "guest-boot-order", "ok": False, "detail": "the guest audit printed no findings list"}
    codes = sorted({str(f.get("code"))[:40] for f in findings if isinstance(f, dict)})
    detail = (f"{len(findings)} finding(s): {', '.join(codes)[:200]} (vmcrash guest audit --domain {name})"
              if findings else "services start after the clock is stepped, every wait bounded")
    return {"name": "guest-boot-order", "ok": not findings and run.exit_code == 0, "detail": detail}
