"""fallocate(2) with a mode, for the test scripts (Python's os module has
only posix_fallocate)."""
import ctypes
import os

FALLOC_FL_KEEP_SIZE, FALLOC_FL_PUNCH_HOLE, FALLOC_FL_ZERO_RANGE = 1, 2, 16
libc = ctypes.CDLL(None, use_errno=True)
libc.fallocate.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_long, ctypes.c_long]


def falloc(fd, mode, off, ln):
    if libc.fallocate(fd, mode, off, ln) != 0:
        e = ctypes.get_errno()
        raise OSError(e, "fallocate(mode %#x, %d, %d): %s" % (mode, off, ln, os.strerror(e)))
