"""Keeping freed memory for the next run: a glibc malloc setting that makes repeated runs cheap.

Every forward and backward run allocates its values and gradients afresh (they belong to the
``Activations`` and ``Gradients`` a user may keep and compare).  With glibc's defaults, blocks
above 128 KiB come from ``mmap`` and go back to the system when freed, so the next run
page-faults all of that memory in again; on a virtual machine those page faults cost more than
the arithmetic on the pages (benchmarks/RESULTS.md, 'medium': the step took about twice as long).
Raising malloc's mmap and trim thresholds keeps freed blocks in the heap for the next run.

It is process-wide and only on Linux with glibc; set ``TINYGRAPH_KEEP_FREED_MEMORY=0`` before
importing tinygraph to leave malloc as it is.  The cost: freed memory up to ``TRIM_THRESHOLD``
stays with the process instead of going back to the system.
"""

import ctypes
import os
import platform

M_TRIM_THRESHOLD = -1
M_MMAP_THRESHOLD = -3
MMAP_THRESHOLD = 32 << 20    # glibc's largest allowed value on 64-bit systems
TRIM_THRESHOLD = 512 << 20

_applied = None


def keep_freed_memory():
    """Ask glibc to reuse freed blocks below 32 MiB instead of unmapping them.  Returns True
    when the setting took effect (False elsewhere: other platforms, or opted out by the env)."""
    global _applied
    if _applied is not None:
        return _applied
    _applied = False
    if os.environ.get("TINYGRAPH_KEEP_FREED_MEMORY", "1").strip() in ("0", "false", "no", "off"):
        return False
    if platform.system() != "Linux" or platform.libc_ver()[0] != "glibc":
        return False
    try:
        libc = ctypes.CDLL("libc.so.6")
        ok = libc.mallopt(M_MMAP_THRESHOLD, MMAP_THRESHOLD) == 1
        ok = libc.mallopt(M_TRIM_THRESHOLD, TRIM_THRESHOLD) == 1 and ok
    except (OSError, AttributeError):
        return False
    _applied = ok
    return ok
