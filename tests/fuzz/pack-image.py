#!/usr/bin/env python3
"""Pack an image into the sparse input form of the image fuzz targets, or back.

  pack-image.py pack IMAGE PACKED      # drop the zeroes: a 4 MiB vhdx becomes a few KiB
  pack-image.py unpack PACKED IMAGE    # the file the target opens (e.g. a regression)

Packed form (fuzz-image.c): b"vdfzpack", u32 file size, then records of
u32 offset, u32 length and the bytes; little-endian. The file size is capped
at 64 MiB by the target.
"""
import struct
import sys

SECTOR = 512
GAP = 64  # zero bytes inside a record rather than a new 8-byte record header


def pack(src, dst):
    data = open(src, "rb").read()
    if len(data) > 64 << 20:
        sys.exit(f"{src}: larger than the 64 MiB a packed image may be")
    out = [b"vdfzpack", struct.pack("<I", len(data))]
    zero = bytes(SECTOR)
    off = 0
    while off < len(data):
        if data[off:off + SECTOR] == zero[:len(data[off:off + SECTOR])]:
            off += SECTOR
            continue
        end = off
        while end < len(data) and data[end:end + SECTOR] != zero[:len(data[end:end + SECTOR])]:
            end += SECTOR
        end = min(end, len(data))
        chunk = data[off:end]
        # Trim zero bytes at both ends, then split at long zero runs.
        start = off + (len(chunk) - len(chunk.lstrip(b"\0")))
        stop = off + len(chunk.rstrip(b"\0"))
        i = start
        while i < stop:
            j = i
            while j < stop:
                z = j
                while z < stop and data[z] == 0:
                    z += 1
                if z - j >= GAP:
                    break
                j = z + 1 if z == j else z
            out.append(struct.pack("<II", i, j - i) + data[i:j])
            i = j
            while i < stop and data[i] == 0:
                i += 1
        off = end
    open(dst, "wb").write(b"".join(out))


def unpack(src, dst):
    data = open(src, "rb").read()
    if data[:8] != b"vdfzpack":
        sys.exit(f"{src}: not a packed image")
    size = min(struct.unpack_from("<I", data, 8)[0], 64 << 20)
    img = bytearray(size)
    p = 12
    while p + 8 <= len(data):
        off, n = struct.unpack_from("<II", data, p)
        p += 8
        n = min(n, len(data) - p)
        if off < size and n:
            k = min(n, size - off)
            img[off:off + k] = data[p:p + k]
        p += n
    open(dst, "wb").write(img)


if __name__ == "__main__":
    if len(sys.argv) != 4 or sys.argv[1] not in ("pack", "unpack"):
        sys.exit(__doc__)
    (pack if sys.argv[1] == "pack" else unpack)(sys.argv[2], sys.argv[3])
