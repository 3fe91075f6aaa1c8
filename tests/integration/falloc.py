"""fallocate(2) with a mode, for the test writers (crash-writer.py,
mirror-writer.py, discard-race.py, powerloss.py): Python's os module has only
posix_fallocate."""
import ctypes
import os

FALLOC_FL_KEEP_SIZE, FALLOC_FL_PUNCH_HOLE, FALLOC_FL_ZERO_RANGE = 1, 2, 0x10
_libc = ctypes.CDLL(None, use_errno=True)
_libc.fallocate.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_long, ctypes.c_long]


def fallocate(fd, mode, off, ln):
    if _libc.fallocate(fd, mode, off, ln) != 0:
        e = ctypes.get_errno()
        raise OSError(e, "fallocate(mode %#x, %d, %d): %s" % (mode, off, ln, os.strerror(e)))
