#!/usr/bin/env python3
"""Structure-aware mutation of qcow2 and vhdx images, for contrib/fuzz-mount.sh.

  mutate.py IMAGE SEED OUT     # OUT = IMAGE with 1-4 mutations chosen by SEED

The mutator knows where each structure's fields are: qcow2 header fields and
extensions, L1/L2 entries, the refcount table and blocks, the snapshot table,
the bitmap directory and bitmap tables; vhdx headers, region tables, the
metadata table and items, BAT entries and log entries. A mutation sets a field
to 0, all ones, past the end of the file, unaligned, huge or off by one;
duplicates or crosses two pointers; swaps two tables; or flips random bits.
vhdx headers, region tables and log entries get their CRC-32C recomputed so
mutations reach the code behind the checksum (not always: a stale checksum is
a mutation too). The same IMAGE and SEED always give the same OUT.
"""
import random
import struct
import sys

# ---------------------------------------------------------------- fields


class Field:
    """width bytes at off, big- or little-endian; kind: ptr, size, count, flags, misc."""

    def __init__(self, name, off, width, kind, big, align=1):
        self.name, self.off, self.width, self.kind = name, off, width, kind
        self.big, self.align = big, align

    def get(self, img):
        b = bytes(img[self.off:self.off + self.width])
        return int.from_bytes(b, "big" if self.big else "little")

    def put(self, img, v):
        v &= (1 << (8 * self.width)) - 1
        img[self.off:self.off + self.width] = v.to_bytes(self.width,
                                                         "big" if self.big else "little")


def be(b, o, n):
    return int.from_bytes(b[o:o + n], "big") if o + n <= len(b) else 0


def le(b, o, n):
    return int.from_bytes(b[o:o + n], "little") if o + n <= len(b) else 0


# ---------------------------------------------------------------- qcow2

L2_OFF_MASK = 0x00FFFFFFFFFFFE00


def qcow2_fields(img):
    """Every field the mutator may touch, and the tables (off, len) it may swap."""
    f, tables = [], []
    if img[:4] != b"QFI\xfb" or len(img) < 72:
        return f, tables
    H = lambda n, o, w, k, a=1: f.append(Field(n, o, w, k, True, a))
    version = be(img, 4, 4)
    cbits = be(img, 20, 4)
    cs = 1 << cbits if 9 <= cbits <= 21 else 65536
    for n, o, w, k in (("version", 4, 4, "misc"), ("backing_file_offset", 8, 8, "ptr"),
                       ("backing_file_size", 16, 4, "size"), ("cluster_bits", 20, 4, "misc"),
                       ("size", 24, 8, "size"), ("crypt_method", 32, 4, "flags"),
                       ("l1_size", 36, 4, "count"), ("l1_table_offset", 40, 8, "ptr"),
                       ("refcount_table_offset", 48, 8, "ptr"),
                       ("refcount_table_clusters", 56, 4, "count"),
                       ("nb_snapshots", 60, 4, "count"), ("snapshots_offset", 64, 8, "ptr")):
        H(n, o, w, k, cs if k == "ptr" else 1)
    hlen = 72
    rorder = 4
    if version >= 3 and len(img) >= 104:
        for n, o, w, k in (("incompatible_features", 72, 8, "flags"),
                           ("compatible_features", 80, 8, "flags"),
                           ("autoclear_features", 88, 8, "flags"),
                           ("refcount_order", 96, 4, "misc"), ("header_length", 100, 4, "size")):
            H(n, o, w, k)
        hlen = be(img, 100, 4)
        rorder = be(img, 96, 4)
        if hlen >= 112:
            H("compression_type", 104, 1, "misc")
    # Header extensions.
    p = (hlen + 7) & ~7 if version >= 3 else 72
    while p + 8 <= min(len(img), cs):
        typ, ln = be(img, p, 4), be(img, p + 4, 4)
        if typ == 0:
            break
        H("ext_type", p, 4, "misc")
        H("ext_len", p + 4, 4, "size")
        if typ == 0x23852875 and ln >= 24:  # bitmaps
            H("nb_bitmaps", p + 8, 4, "count")
            H("bitmap_directory_size", p + 16, 8, "size")
            H("bitmap_directory_offset", p + 24, 8, "ptr", cs)
            bitmap_fields(img, f, tables, be(img, p + 24, 8), be(img, p + 8, 4), cs)
        p += 8 + ((ln + 7) & ~7)
    # L1 and the L2 tables it names.
    l1_off, l1_size = be(img, 40, 8), be(img, 36, 4)
    ext_l2 = version >= 3 and be(img, 72, 8) & 16
    l2_entries = cs // (16 if ext_l2 else 8)
    table_entries(img, f, tables, "l1", l1_off, min(l1_size, 4096), 8, True, cs)
    for i in range(min(l1_size, 64)):
        l2 = be(img, l1_off + 8 * i, 8) & L2_OFF_MASK
        if l2 and l2 + cs <= len(img):
            table_entries(img, f, tables, "l2", l2, l2_entries, 16 if ext_l2 else 8, True, cs)
            if ext_l2:
                for j in range(0, l2_entries, 97):
                    H("l2_bitmap", l2 + 16 * j + 8, 8, "flags")
    # Refcount table and blocks.
    rt_off, rt_cl = be(img, 48, 8), be(img, 56, 4)
    table_entries(img, f, tables, "reftable", rt_off, min(rt_cl * cs // 8, 4096), 8, True, cs)
    for i in range(min(rt_cl * cs // 8, 16)):
        rb = be(img, rt_off + 8 * i, 8)
        if rb and rb + cs <= len(img) and rorder <= 6:
            bits = 1 << rorder
            tables.append((rb, cs))
            if bits >= 8:
                for j in range(0, cs * 8 // bits, 13):
                    H("refcount", rb + j * bits // 8, bits // 8, "count")
            else:  # sub-byte widths: the byte that holds several counts
                for j in range(0, cs, 13):
                    H("refcount8", rb + j, 1, "count")
    snapshot_fields(img, f, tables, be(img, 64, 8), be(img, 60, 4), cs)
    return f, tables


def table_entries(img, f, tables, name, off, n, step, big, align):
    """Entries of a pointer table (a sample when it is long)."""
    if not off or off >= len(img):
        return
    tables.append((off, min(n * step, len(img) - off)))
    raw = bytes(img[off:off + n * step])
    raw = raw[:len(raw) // step * step]
    used = [i for i, (v,) in enumerate(struct.iter_unpack(">Q" if step == 8 else ">Q8x", raw)) if v]
    pick = used[:48] + list(range(0, n, max(1, n // 8)))[:8]
    for i in pick:
        if off + i * step + 8 <= len(img):
            f.append(Field(name, off + i * step, 8, "ptr", big, align))


SNAPSHOT = (("snap_l1_offset", 0, 8, "ptr"), ("snap_l1_size", 8, 4, "count"),
            ("snap_id_len", 12, 2, "size"), ("snap_name_len", 14, 2, "size"),
            ("snap_vm_state", 32, 4, "size"), ("snap_extra_len", 36, 4, "size"))
BITMAP = (("bitmap_table_offset", 0, 8, "ptr"), ("bitmap_table_size", 8, 4, "count"),
          ("bitmap_flags", 12, 4, "flags"), ("bitmap_type", 16, 1, "misc"),
          ("bitmap_gran", 17, 1, "misc"), ("bitmap_name_size", 18, 2, "size"),
          ("bitmap_extra", 20, 4, "size"))


def add_fields(f, base, layout, big, align):
    """(name, offset, width, kind) rows at base; pointers and sizes aligned to align."""
    for n, o, w, k in layout:
        f.append(Field(n, base + o, w, k, big, align if k in ("ptr", "size") else 1))


def directory_fields(img, f, tables, off, n, cs, layout, table, limit, entry_len):
    """A qcow2 directory (snapshots, bitmaps): each entry's fields and its table.
    Every entry's first 8 bytes point at its table, the next 4 count its entries."""
    for _ in range(min(n, 8)):
        if off + entry_len(off) > len(img) or not entry_len(off):
            return
        add_fields(f, off, layout, True, cs)
        table_entries(img, f, tables, table, be(img, off, 8), min(be(img, off + 8, 4), limit),
                      8, True, cs)
        off += (entry_len(off) + 7) & ~7


def snapshot_fields(img, f, tables, off, n, cs):
    def entry_len(o):
        return 40 + be(img, o + 36, 4) + be(img, o + 12, 2) + be(img, o + 14, 2)

    directory_fields(img, f, tables, off, n, cs, SNAPSHOT, "snap_l1", 512, entry_len)


def bitmap_fields(img, f, tables, off, n, cs):
    def entry_len(o):
        return 24 + be(img, o + 20, 4) + be(img, o + 18, 2)

    directory_fields(img, f, tables, off, n, cs, BITMAP, "bitmap_table", 64, entry_len)


# ---------------------------------------------------------------- vhdx

KiB, MiB = 1024, 1024 * 1024
BAT_GUID = bytes.fromhex("6677c22d23f600429d64115e9bfd4a08")
META_GUID = bytes.fromhex("06a27c8b90479a4bb8fe575f050f886e")


def crc32c(b, _t=[]):
    if not _t:
        for i in range(256):
            c = i
            for _ in range(8):
                c = (c >> 1) ^ 0x82F63B78 if c & 1 else c >> 1
            _t.append(c)
    c = 0xFFFFFFFF
    for x in b:
        c = _t[(c ^ x) & 0xFF] ^ (c >> 8)
    return c ^ 0xFFFFFFFF


def vhdx_current_header(img):
    s1, s2 = le(img, 64 * KiB + 8, 8), le(img, 128 * KiB + 8, 8)
    return 128 * KiB if s2 > s1 else 64 * KiB


def vhdx_fields(img):
    f, tables = [], []
    if img[:8] != b"vhdxfile" or len(img) < 320 * KiB:
        return f, tables
    L = lambda n, o, w, k, a=1: f.append(Field(n, o, w, k, False, a))
    for h in (64 * KiB, 128 * KiB):
        for n, o, w, k in (("h_seq", 8, 8, "count"), ("h_file_write_guid", 16, 8, "misc"),
                           ("h_data_write_guid", 32, 8, "misc"), ("h_log_guid", 48, 8, "misc"),
                           ("h_log_guid_hi", 56, 8, "misc"), ("h_log_version", 64, 2, "misc"),
                           ("h_version", 66, 2, "misc"), ("h_log_length", 68, 4, "size"),
                           ("h_log_offset", 72, 8, "ptr")):
            L(n, h + o, w, k, MiB if k in ("ptr", "size") else 1)
    bat = meta = None
    for rt in (192 * KiB, 256 * KiB):
        L("rt_count", rt + 8, 4, "count")
        for i in range(min(le(img, rt + 8, 4), 8)):
            e = rt + 16 + 32 * i
            L("rt_guid", e, 4, "misc")
            L("rt_offset", e + 16, 8, "ptr", MiB)
            L("rt_length", e + 24, 4, "size", MiB)
            L("rt_required", e + 28, 4, "flags")
            if rt == 192 * KiB and img[e:e + 16] == BAT_GUID:
                bat = (le(img, e + 16, 8), le(img, e + 24, 4))
            if rt == 192 * KiB and img[e:e + 16] == META_GUID:
                meta = (le(img, e + 16, 8), le(img, e + 24, 4))
    if meta and meta[0] + 32 <= len(img):
        m = meta[0]
        tables.append((m, min(meta[1], len(img) - m)))
        L("md_count", m + 10, 2, "count")
        for i in range(min(le(img, m + 10, 2), 16)):
            e = m + 32 + 32 * i
            L("md_item_offset", e + 16, 4, "ptr")
            L("md_item_length", e + 20, 4, "size")
            L("md_item_flags", e + 24, 4, "flags")
            it = m + le(img, e + 16, 4)
            if it + 8 <= len(img):  # the item's first fields: sizes, flags
                L("md_item_word0", it, 4, "size")
                L("md_item_word1", it + 4, 4, "size")
                L("md_item_qword", it, 8, "size")
    if bat and bat[0] < len(img):
        tables.append((bat[0], min(bat[1], len(img) - bat[0])))
        n = min(bat[1], len(img) - bat[0]) // 8
        used = [i for i, (v,) in enumerate(struct.iter_unpack("<Q", bytes(img[bat[0]:bat[0] + 8 * n])))
                if v]
        for i in used[:64] + list(range(0, n, max(1, n // 8)))[:8]:
            L("bat", bat[0] + 8 * i, 8, "ptr", MiB)
            L("bat_state", bat[0] + 8 * i, 1, "flags")
    log_fields(img, f, tables)
    return f, tables


def log_entries(img):
    """(offset, length) of every log entry with a plausible header."""
    h = vhdx_current_header(img)
    off, ln = le(img, h + 72, 8), le(img, h + 68, 4)
    out = []
    if not off or off + ln > len(img):
        return out
    p = 0
    while p + 4096 <= ln:
        e = off + p
        if img[e:e + 4] == b"loge":
            el = le(img, e + 8, 4)
            out.append((e, el))
            if el and el % 4096 == 0:
                p += el
                continue
        p += 4096
    return out


def log_fields(img, f, tables):
    for e, el in log_entries(img):
        L = lambda n, o, w, k: f.append(Field(n, e + o, w, k, False))
        tables.append((e, el if el and e + el <= len(img) else 4096))
        for n, o, w, k in (("log_length", 8, 4, "size"), ("log_tail", 12, 4, "size"),
                           ("log_seq", 16, 8, "count"), ("log_desc_count", 24, 4, "count"),
                           ("log_flushed_off", 48, 8, "ptr"), ("log_last_off", 56, 8, "ptr")):
            L(n, o, w, k)
        for i in range(min(le(img, e + 24, 4), 32)):
            d = 64 + 32 * i
            L("desc_trailing", d + 4, 4, "size")
            L("desc_length", d + 8, 8, "size")
            L("desc_file_off", d + 16, 8, "ptr")
            L("desc_seq", d + 24, 8, "count")


def vhdx_fix_crcs(img, rng):
    """Recompute what the checksums cover, the log entries first (headers do not cover them)."""
    for e, el in log_entries(img):
        if el and el % 4096 == 0 and e + el <= len(img):
            fix_crc(img, e, el)
    for off, ln in ((64 * KiB, 4 * KiB), (128 * KiB, 4 * KiB), (192 * KiB, 64 * KiB),
                    (256 * KiB, 64 * KiB)):
        if rng.random() < 0.95:
            fix_crc(img, off, ln)


def fix_crc(img, off, ln):
    img[off + 4:off + 8] = bytes(4)
    img[off + 4:off + 8] = struct.pack("<I", crc32c(bytes(img[off:off + ln])))


# ---------------------------------------------------------------- mutations


def field_value(rng, fld, old, size):
    """A hostile value for fld (old is what it holds, size the file size)."""
    top = (1 << (8 * fld.width)) - 1
    a = max(fld.align, 1)
    choices = [0, top, old ^ (1 << rng.randrange(8 * fld.width)), old + 1, old - 1,
               old + a, old - a, top >> 1, 1 << rng.randrange(8 * fld.width)]
    if fld.kind in ("ptr", "size"):
        choices += [size, size + a, (size + 1024 * a) & top, (1 << 40) & top,
                    (1 << 56) & top, old + rng.choice((1, 8, 511, 512)),
                    (size // 2) // a * a, a]
    if fld.kind == "count":
        choices += [old * 2, old + 1000, 0x10000, 0x7FFFFFFF & top]
    if fld.kind == "flags":
        choices += [old | 1 << rng.randrange(8 * fld.width), 0]
    if fld.name in ("l2", "l1", "reftable", "snap_l1", "bitmap_table"):
        # Keep the flag bits, move the offset: past EOF, unaligned, onto the header.
        flags = old & ~L2_OFF_MASK
        choices += [flags | ((size + a * rng.randrange(1, 4)) & L2_OFF_MASK),
                    flags | ((old + 512) & L2_OFF_MASK), flags, old | 1 << 62, old | 1 << 63,
                    old & ~(1 << 63)]
    if fld.name == "bat":
        choices += [old & ~7 | rng.randrange(8), (old & 7) | ((size >> 20) + 1) << 20,
                    (old & 7) | (1 << 43) << 20]
    return rng.choice(choices) & top


def mutate_field(rng, img, fields, tables):
    # A structure first, then one of its fields: the long tables do not crowd out the header.
    name = rng.choice(sorted({x.name for x in fields}))
    fld = rng.choice([x for x in fields if x.name == name])
    fld.put(img, field_value(rng, fld, fld.get(img), len(img)))
    return f"{fld.name}@{fld.off:#x}"


def cross_pointers(rng, img, fields, tables):
    ptrs = [x for x in fields if x.kind == "ptr" and x.width == 8]
    if len(ptrs) < 2:
        return flip_bits(rng, img, fields, tables)
    a, b = rng.sample(ptrs, 2)
    va, vb = a.get(img), b.get(img)
    if rng.random() < 0.5:
        a.put(img, vb)
        return f"dup {b.name}@{b.off:#x} into {a.name}@{a.off:#x}"
    a.put(img, vb)
    b.put(img, va)
    return f"cross {a.name}@{a.off:#x} {b.name}@{b.off:#x}"


def swap_tables(rng, img, fields, tables):
    if len(tables) < 2:
        return flip_bits(rng, img, fields, tables)
    (a, la), (b, lb) = rng.sample(tables, 2)
    n = min(la, lb)
    if a < b < a + n or b < a < b + n or n <= 0:
        return flip_bits(rng, img, fields, tables)
    ta, tb = bytes(img[a:a + n]), bytes(img[b:b + n])
    img[a:a + n] = tb
    if rng.random() < 0.7:
        img[b:b + n] = ta
        return f"swap {a:#x} {b:#x} {n:#x}"
    return f"copy {b:#x} over {a:#x} {n:#x}"


def flip_bits(rng, img, fields, tables):
    # Mostly in metadata: a table or the first 1 MiB; sometimes anywhere.
    if tables and rng.random() < 0.6:
        off, ln = rng.choice(tables)
    elif rng.random() < 0.7:
        off, ln = 0, min(len(img), 1 << 20)
    else:
        off, ln = 0, len(img)
    n = rng.randrange(1, 9)
    for _ in range(n):
        p = off + rng.randrange(max(ln, 1))
        if p < len(img):
            img[p] ^= 1 << rng.randrange(8)
    return f"flip {n} bits in {off:#x}+{ln:#x}"


def truncate_or_grow(rng, img, fields, tables):
    if rng.random() < 0.5 and len(img) > 4096:
        n = rng.randrange(len(img) // 2, len(img))
        del img[n:]
        return f"truncate to {n:#x}"
    n = rng.choice((1, 512, 4096, 65536))
    img.extend(bytes(n))
    return f"grow by {n:#x}"


def activate_log(rng, img, fields, tables):
    """vhdx: point the current header's LogGuid at a log entry, so it is replayed."""
    ents = log_entries(img) if img[:8] == b"vhdxfile" else []
    if not ents:
        return flip_bits(rng, img, fields, tables)
    e, _ = rng.choice(ents)
    h = vhdx_current_header(img)
    img[h + 48:h + 64] = img[e + 32:e + 48]
    return f"LogGuid of {h:#x} from the entry at {e:#x}"


OPS = ((mutate_field, 10), (cross_pointers, 3), (swap_tables, 2), (flip_bits, 3),
       (truncate_or_grow, 1), (activate_log, 1))


def mutate(data, seed):
    """Mutated copy of data and the list of what was done."""
    rng = random.Random(seed)
    img = bytearray(data)
    vhdx = img[:8] == b"vhdxfile"
    done = []
    for _ in range(rng.choice((1, 1, 1, 2, 2, 3, 4))):
        fields, tables = vhdx_fields(img) if vhdx else qcow2_fields(img)
        if not fields:
            done.append(flip_bits(rng, img, fields, tables))
            continue
        op = rng.choices([o for o, _ in OPS], [w for _, w in OPS])[0]
        done.append(op(rng, img, fields, tables))
    if vhdx:
        vhdx_fix_crcs(img, rng)
    return bytes(img), done


def main():
    if len(sys.argv) != 4:
        sys.exit(__doc__)
    data, done = mutate(open(sys.argv[1], "rb").read(), int(sys.argv[2]))
    open(sys.argv[3], "wb").write(data)
    print("; ".join(done))


if __name__ == "__main__":
    main()
