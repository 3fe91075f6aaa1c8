#!/usr/bin/env python3
"""Fail the build when a source file includes against the layers.

The layers, top to bottom (docs/design.md, "Layers"):

    main.c, ctl/  ->  fuse/  ->  mirror/  ->  image/  ->  formats/  ->  io/  ->  util/

A file may include headers of its own folder and of the folders below it,
with two narrowings: a driver (formats/) sees the image layer only through
the driver contract image/format.h, and a module's private header is for
that module alone (formats/qcow2.h and formats/vhdx.h for their driver,
mirror/mirror-int.h, backup-int.h, job-target.h, job-copy.h and job-opts.h
for the mirror folder's jobs).

Usage: check-layers.py SRC_DIR STAMP  (writes STAMP when every file passes)
"""
import pathlib
import re
import sys

ORDER = ["util", "io", "formats", "image", "mirror", "fuse", "ctl", "."]
# Headers another folder may not include, and who may.
PRIVATE = {
    "formats/qcow2.h": ("formats",),
    "formats/vhdx.h": ("formats",),
    "formats/qcow2-bitmap.h": ("formats",),
    "mirror/mirror-int.h": ("mirror",),
    "mirror/backup-int.h": ("mirror",),
    "mirror/job-target.h": ("mirror",),
    "mirror/job-copy.h": ("mirror",),
    "mirror/job-opts.h": ("mirror",),
}
# The one exception to ORDER: the drivers sit below the image layer that
# lists them, and see it only through the driver contract.
ONLY = {
    ("formats", "image"): ("image/format.h",),
}
INCLUDE = re.compile(r'^\s*#\s*include\s+"([^"]+)"', re.M)


def folder_of(path, src):
    rel = path.relative_to(src)
    return rel.parts[0] if len(rel.parts) > 1 else "."


def check(path, src):
    me = folder_of(path, src)
    errors = []
    for header in INCLUDE.findall(path.read_text()):
        parts = header.split("/")
        if len(parts) == 1:
            # a bare name: only a header beside the file (quotes look there first)
            if not (path.parent / header).exists():
                errors.append(f'"{header}" is not rooted at src/ ("folder/{header}")')
            continue
        theirs = parts[0]
        if theirs not in ORDER:
            errors.append(f'"{header}": no such layer')
            continue
        if (me, theirs) in ONLY:
            if header not in ONLY[(me, theirs)]:
                allowed = ", ".join(ONLY[(me, theirs)])
                errors.append(f'"{header}": {me}/ may include only {allowed} of {theirs}/')
        elif ORDER.index(theirs) > ORDER.index(me):
            errors.append(f'"{header}": {me}/ may not include a layer above it ({theirs}/)')
        elif header in PRIVATE and me not in PRIVATE[header]:
            errors.append(f'"{header}" is private to {", ".join(PRIVATE[header])}/')
    return [f"{path.relative_to(src.parent)}: {e}" for e in errors]


def main():
    src = pathlib.Path(sys.argv[1]).resolve()
    stamp = pathlib.Path(sys.argv[2])
    errors = []
    for path in sorted(src.rglob("*.[ch]")):
        errors += check(path, src)
    if errors:
        print("\n".join(errors), file=sys.stderr)
        print("layers: see docs/design.md, \"Layers\"", file=sys.stderr)
        return 1
    stamp.write_text("ok\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
