"""The kernel log, walked from guest memory with the layout VMCOREINFO describes (no debuginfo).

Newest layout first:

* Linux >= 5.10: the lockless ring buffer ``prb`` (``kernel/printk/printk_ringbuffer.h``): a
  descriptor ring (``prb_desc``: ``state_var`` = 2 state bits + 62-bit id, and the text block's
  logical positions) parallel to an info array (``printk_info``: seq, ts_nsec, text_len, facility,
  flags:5/level:3, caller_id, dev_info), and a text data ring whose blocks start with the 8-byte
  descriptor id. Walked from ``tail_id`` to ``head_id``.
* Linux 3.5 .. 5.9: ``log_buf`` of ``struct printk_log`` records (header, text, dict), walked from
  ``log_first_idx`` to ``log_next_idx``; a zero length means "wrap to the start".

Every count, size and index comes from guest memory and is bounded before use.
"""

from __future__ import annotations

import struct
from collections.abc import Iterator
from dataclasses import dataclass

from vmcrash.errors import GuestMemoryError

from ._vmcoreinfo import VmcoreInfo
from ._x86 import KernelMemory

__all__ = [
    "LOG_CONT",
    "LOG_NEWLINE",
    "PrintkRecord",
    "for_each_record",
    "printk_layout",
    "render_line_prefix",
]

LOG_NEWLINE = 2
LOG_CONT = 8
_DESC_FLAGS_SHIFT = 62
_DESC_ID_MASK = (1 << 62) - 1
_DESC_COMMITTED = 1
_DESC_FINALIZED = 2
MAX_COUNT_BITS = 22
MAX_DATA_BITS = 27
#: descriptors + infos + text read at most (a 32 MiB log_buf_len needs ~150 MiB).
MAX_PRB_BYTES = 256 << 20
MAX_LEGACY_LOG_BYTES = 64 << 20
_CHUNK = 1 << 20


@dataclass(frozen=True)
class PrintkRecord:
    """One kernel log record.

    :ivar seq: sequence number (legacy layout: position in the walk).
    :ivar timestamp_ns: ``local_clock()`` at printk time, ns since boot.
    :ivar level: 0 (emerg) .. 7 (debug). :ivar facility: 0 for the kernel.
    :ivar flags: ``LOG_NEWLINE``/``LOG_CONT``/... bits.
    :ivar caller_id: ``0x80000000 | cpu`` from interrupt context, else the task's PID; 0 unknown.
    :ivar text: the message, may hold several lines; bytes as the kernel stored them.
    :ivar subsystem: :ivar device: ``dev_printk`` info (``b""`` when none).
    """

    seq: int
    timestamp_ns: int
    level: int
    facility: int
    flags: int
    caller_id: int
    text: bytes
    subsystem: bytes = b""
    device: bytes = b""

    @property
    def caller(self) -> str:
        """``"T<pid>"`` or ``"C<cpu>"`` as ``printk.caller`` shows it; ``""`` when unknown."""
        if not self.caller_id:
            return ""
        if self.caller_id & 0x80000000:
            return f"C{self.caller_id & 0x7FFFFFFF}"
        return f"T{self.caller_id}"

    def lines(self) -> list[bytes]:
        """The text split into lines (a record may carry several), trailing newline dropped."""
        text = self.text[:-1] if self.text.endswith(b"\n") else self.text
        return text.split(b"\n")

    def render(self) -> list[str]:
        """Lines as the serial console shows them with ``printk.time=1``: ``[    4.537700] text``."""
        prefix = render_line_prefix(self.timestamp_ns)
        return [prefix + line.decode("utf-8", "replace") for line in self.lines()]


def render_line_prefix(timestamp_ns: int) -> str:
    """``"[%5lu.%06lu] "`` of ``printk``'s ``print_time()``."""
    sec, rem = divmod(timestamp_ns, 1_000_000_000)
    return f"[{sec:5d}.{rem // 1000:06d}] "


def printk_layout(vi: VmcoreInfo) -> str | None:
    """Which kernel-log layout VMCOREINFO describes: ``"prb"``, ``"log_buf"`` or ``None``."""
    if "prb" in vi.symbols and "printk_info.seq" in vi.offsets:
        return "prb"
    if "log_buf" in vi.symbols and ("printk_log" in vi.sizes or "log" in vi.sizes):
        return "log_buf"
    return None


def for_each_record(mem: KernelMemory, vi: VmcoreInfo, *, problems: list[str] | None = None
                    ) -> Iterator[PrintkRecord]:
    """Yield the kernel log records in sequence order.

    :param problems: if given, records that had to be skipped are described here.
    :raises GuestMemoryError: VMCOREINFO describes no known layout, or the ring's header is
        unreadable or implausible (a single bad record is skipped, not raised).
    """
    layout = printk_layout(vi)
    if layout == "prb":
        yield from _prb_records(mem, vi, problems if problems is not None else [])
    elif layout == "log_buf":
        yield from _legacy_records(mem, vi, problems if problems is not None else [])
    else:
        raise GuestMemoryError("VMCOREINFO describes no known kernel log layout (neither prb nor log_buf)")


# -- Linux >= 5.10: lockless ring buffer ----------------------------------------------------


def _read_array(mem: KernelMemory, addr: int, size: int) -> bytes:
    parts = []
    for off in range(0, size, _CHUNK):
        parts.append(mem.read(addr + off, min(_CHUNK, size - off)))
    return b"".join(parts)


def _prb_records(mem: KernelMemory, vi: VmcoreInfo, problems: list[str]) -> Iterator[PrintkRecord]:
    o = vi.offset
    prb = mem.u64(vi.symbol("prb"))  # `prb` is a pointer to the ring buffer in use
    desc_ring = prb + o("printk_ringbuffer.desc_ring")
    text_ring = prb + o("printk_ringbuffer.text_data_ring")
    count_bits = mem.u32(desc_ring + o("prb_desc_ring.count_bits"))
    size_bits = mem.u32(text_ring + o("prb_data_ring.size_bits"))
    if not 0 < count_bits <= MAX_COUNT_BITS or not 0 < size_bits <= MAX_DATA_BITS:
        raise GuestMemoryError(f"printk ring buffer has implausible sizes (2^{count_bits} descriptors, "
                               f"2^{size_bits} text bytes)", address=prb)
    count = 1 << count_bits
    data_size = 1 << size_bits
    descs_addr = mem.u64(desc_ring + o("prb_desc_ring.descs"))
    infos_addr = mem.u64(desc_ring + o("prb_desc_ring.infos"))
    data_addr = mem.u64(text_ring + o("prb_data_ring.data"))
    head_id = mem.u64(desc_ring + o("prb_desc_ring.head_id")) & _DESC_ID_MASK
    tail_id = mem.u64(desc_ring + o("prb_desc_ring.tail_id")) & _DESC_ID_MASK

    desc_size = vi.size("prb_desc")
    info_size = vi.size("printk_info")
    if not 0 < desc_size <= 256 or not 0 < info_size <= 1024:
        raise GuestMemoryError(f"implausible prb_desc/printk_info sizes {desc_size}/{info_size}")
    total = count * (desc_size + info_size) + data_size
    if total > MAX_PRB_BYTES:
        raise GuestMemoryError(f"printk ring buffer would need {total >> 20} MiB; refusing more than "
                               f"{MAX_PRB_BYTES >> 20} MiB", address=prb)
    descs = _read_array(mem, descs_addr, count * desc_size)
    infos = _read_array(mem, infos_addr, count * info_size)
    data = _read_array(mem, data_addr, data_size)

    off_state = o("prb_desc.state_var")
    off_lpos = o("prb_desc.text_blk_lpos")
    off_begin = o("prb_data_blk_lpos.begin")
    off_next = o("prb_data_blk_lpos.next")
    off_seq = o("printk_info.seq")
    off_ts = o("printk_info.ts_nsec")
    off_len = o("printk_info.text_len")
    off_caller = vi.offsets.get("printk_info.caller_id")
    off_dev = vi.offsets.get("printk_info.dev_info")
    off_subsys = vi.offsets.get("dev_printk_info.subsystem")
    off_device = vi.offsets.get("dev_printk_info.device")
    len_subsys = min(vi.lengths.get("printk_info_subsystem", 16), 64)
    len_device = min(vi.lengths.get("printk_info_device", 48), 128)
    for off, width in ((off_state, 8), (off_lpos + off_begin, 8), (off_lpos + off_next, 8)):
        if off < 0 or off + width > desc_size:
            raise GuestMemoryError("prb_desc offsets fall outside SIZE(prb_desc)")
    for off, width in ((off_seq, 8), (off_ts, 8), (off_len, 4)):
        if off < 0 or off + width > info_size:
            raise GuestMemoryError("printk_info offsets fall outside SIZE(printk_info)")

    records: list[PrintkRecord] = []
    skipped = 0
    rid = tail_id
    for _ in range(count + 1):
        d = (rid % count) * desc_size
        (state_var,) = struct.unpack_from("<Q", descs, d + off_state)
        state = state_var >> _DESC_FLAGS_SHIFT
        if (state_var & _DESC_ID_MASK) == rid and state in (_DESC_COMMITTED, _DESC_FINALIZED):
            rec = _prb_record(descs, infos, data, d, (rid % count) * info_size, rid, data_size, size_bits,
                              off_lpos + off_begin, off_lpos + off_next, off_seq, off_ts, off_len,
                              off_caller, off_dev, off_subsys, off_device, len_subsys, len_device,
                              info_size)
            if rec is None:
                skipped += 1
            else:
                records.append(rec)
        if rid == head_id:
            break
        rid = (rid + 1) & _DESC_ID_MASK
    else:
        problems.append("kernel log: head descriptor not reached; the ring is inconsistent")
    if skipped:
        problems.append(f"kernel log: {skipped} record(s) with corrupt text blocks were skipped")
    records.sort(key=lambda r: r.seq)
    yield from records


def _prb_record(descs: bytes, infos: bytes, data: bytes, d: int, i: int, rid: int, data_size: int,
                size_bits: int, off_begin: int, off_next: int, off_seq: int, off_ts: int, off_len: int,
                off_caller: int | None, off_dev: int | None, off_subsys: int | None,
                off_device: int | None, len_subsys: int, len_device: int, info_size: int
                ) -> PrintkRecord | None:
    (begin,) = struct.unpack_from("<Q", descs, d + off_begin)
    (nxt,) = struct.unpack_from("<Q", descs, d + off_next)
    (seq,) = struct.unpack_from("<Q", infos, i + off_seq)
    (ts,) = struct.unpack_from("<Q", infos, i + off_ts)
    (text_len,) = struct.unpack_from("<H", infos, i + off_len)
    facility = infos[i + off_len + 2] if off_len + 3 < info_size else 0
    flags_level = infos[i + off_len + 3] if off_len + 3 < info_size else 0
    caller_id = 0
    if off_caller is not None and 0 <= off_caller <= info_size - 4:
        (caller_id,) = struct.unpack_from("<I", infos, i + off_caller)
    subsystem = device = b""
    if off_dev is not None and off_subsys is not None and off_device is not None:
        s = i + off_dev + off_subsys
        v = i + off_dev + off_device
        if off_dev + off_subsys + len_subsys <= info_size and off_dev + off_device + len_device <= info_size:
            subsystem = infos[s:s + len_subsys].split(b"\0", 1)[0]
            device = infos[v:v + len_device].split(b"\0", 1)[0]
    if begin & 1 and nxt & 1:
        text = b""  # data-less record (text was dropped or empty)
    else:
        mask = data_size - 1
        if begin >> size_bits == nxt >> size_bits or ((begin >> size_bits) + 1 == nxt >> size_bits
                                                       and nxt & mask == 0 and begin < nxt):
            # a regular block (newer kernels let a block end exactly at the end of the ring)
            start, size = begin & mask, nxt - begin
        elif (begin >> size_bits) + 1 == nxt >> size_bits:
            start, size = 0, nxt & mask  # the block wrapped: it lives at the start of the ring
        else:
            return None
        if size < 8 or start + size > data_size:
            return None
        (block_id,) = struct.unpack_from("<Q", data, start)
        if block_id & _DESC_ID_MASK != rid:
            return None
        text = data[start + 8:start + 8 + min(text_len, size - 8)]
    return PrintkRecord(seq=seq, timestamp_ns=ts, level=flags_level >> 5, facility=facility,
                        flags=flags_level & 0x1F, caller_id=caller_id, text=text,
                        subsystem=subsystem, device=device)


# -- Linux 3.5 .. 5.9: struct printk_log records ----------------------------------------------


def _legacy_records(mem: KernelMemory, vi: VmcoreInfo, problems: list[str]) -> Iterator[PrintkRecord]:
    struct_name = "printk_log" if "printk_log" in vi.sizes else "log"  # renamed in Linux 3.11
    hdr_size = vi.size(struct_name)
    off_ts = vi.offset(f"{struct_name}.ts_nsec")
    off_len = vi.offset(f"{struct_name}.len")
    off_text_len = vi.offset(f"{struct_name}.text_len")
    # dict_len (u16), facility (u8), flags:5/level:3 (u8) follow text_len; caller_id (u32,
    # CONFIG_PRINTK_CALLER, Linux >= 5.1) follows them when the header is large enough.
    off_fac = off_text_len + 4
    off_caller = off_text_len + 6 if hdr_size >= off_text_len + 10 else None
    if (not 0 < hdr_size <= 64 or min(off_ts, off_len, off_text_len) < 0
            or max(off_ts + 8, off_len + 2, off_fac + 2) > hdr_size):
        raise GuestMemoryError(f"implausible SIZE({struct_name}) = {hdr_size}")
    buf = mem.u64(vi.symbol("log_buf"))
    buf_len = mem.u32(vi.symbol("log_buf_len"))
    first = mem.u32(vi.symbol("log_first_idx"))
    nxt = mem.u32(vi.symbol("log_next_idx"))
    if not hdr_size < buf_len <= MAX_LEGACY_LOG_BYTES or first >= buf_len or nxt >= buf_len:
        raise GuestMemoryError(f"implausible log_buf (length {buf_len}, first {first}, next {nxt})")
    data = _read_array(mem, buf, buf_len)
    idx = first
    seq = 0
    wrapped = False
    for _ in range(buf_len // 8 + 2):
        if idx == nxt and (seq or wrapped or first == nxt):
            break
        if idx + hdr_size > buf_len:
            idx, wrapped = 0, True
            continue
        (rec_len,) = struct.unpack_from("<H", data, idx + off_len)
        if rec_len == 0:
            if wrapped:
                problems.append("kernel log: log_buf wraps twice; stopped")
                return
            idx, wrapped = 0, True
            continue
        if rec_len < hdr_size or idx + rec_len > buf_len:
            problems.append(f"kernel log: corrupt record at log_buf offset {idx}; stopped")
            return
        (ts,) = struct.unpack_from("<Q", data, idx + off_ts)
        (text_len,) = struct.unpack_from("<H", data, idx + off_text_len)
        caller_id = 0
        if off_caller is not None:
            (caller_id,) = struct.unpack_from("<I", data, idx + off_caller)
        text = data[idx + hdr_size: idx + hdr_size + min(text_len, rec_len - hdr_size)]
        flags_level = data[idx + off_fac + 1]
        yield PrintkRecord(seq=seq, timestamp_ns=ts, level=flags_level >> 5, facility=data[idx + off_fac],
                           flags=flags_level & 0x1F, caller_id=caller_id, text=text)
        seq += 1
        idx += rec_len
    else:
        problems.append("kernel log: log_buf walk did not end; stopped")
