"""The CPU memory allocator: keep freed memory in the process so that big tensors do not page-fault.

On Linux, glibc serves a request of more than 128 KiB that does not fit the top of its heap
with a fresh ``mmap``, and hands the pages back on ``free``. Each new tensor of tens of MB is
then faulted in, 4 KiB at a time, when it is first written. On the 2-core machines of this
project that costs about 0.25 ms per MB: 13 ms for one ``(2.1 M, 6)`` float32 tensor (the RPN's
class logits at ``paper`` scale), several hundred ms per ``paper``-scale forward pass, whose
activations add up to GBs. The effect is measured side by side by ``rpn-lib bench`` (table
"Allocator").

:func:`retain_freed_memory` raises glibc's ``M_TOP_PAD``: the heap then grows in steps of
``top_pad_mb`` and keeps up to that much freed memory at its top, so big tensors come out of
pages that are already mapped. The price is resident memory: the process holds on to up to
``top_pad_mb`` MB it is not using. Nothing else changes (values are bit for bit the same).

The command line applies it (``top_pad_mb = 1024``) unless the environment variable
``RPN_LIB_ALLOCATOR`` is ``default``; in Python call :func:`retain_freed_memory` yourself.
On other C libraries (macOS, Windows, musl) it does nothing and says so.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os
import sys
from typing import Any

__all__ = ["DEFAULT_TOP_PAD_MB", "ENV_VAR", "allocator_setting", "configure_from_env", "retain_freed_memory"]

DEFAULT_TOP_PAD_MB = 1024
"""Freed memory kept by :func:`retain_freed_memory` by default, MB (a ``paper``-scale fp32
forward pass allocates about 800 MB beyond the model)."""

ENV_VAR = "RPN_LIB_ALLOCATOR"
"""``retain`` (the default of the command line) or ``default`` (glibc as it comes)."""

_M_TOP_PAD = -2  # glibc's malloc.h
_MAX_TOP_PAD_MB = 2047  # mallopt takes a C int of bytes

_state: dict[str, Any] = {"retain_freed_memory": False, "top_pad_mb": None}


def _glibc() -> tuple[ctypes.CDLL, str] | None:
    """The process's C library and its version when it is glibc, else None."""
    if not sys.platform.startswith("linux"):
        return None
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        version = libc.gnu_get_libc_version
    except (OSError, AttributeError):
        return None
    version.restype = ctypes.c_char_p
    return libc, version().decode()


def retain_freed_memory(top_pad_mb: int = DEFAULT_TOP_PAD_MB) -> bool:
    """Let glibc keep up to ``top_pad_mb`` MB of freed memory in this process (``M_TOP_PAD``).

    Affects every allocation made afterwards in the whole process (it is a process-wide
    setting, like a thread count); calling it again with another value replaces the value.

    Args:
        top_pad_mb: MB, 1 to 2047.

    Returns:
        True when applied, False where the C library is not glibc (nothing changed).

    Raises:
        ValueError: ``top_pad_mb`` out of range.
    """
    if not isinstance(top_pad_mb, int) or not 1 <= top_pad_mb <= _MAX_TOP_PAD_MB:
        raise ValueError(f"top_pad_mb must be an integer in [1, {_MAX_TOP_PAD_MB}], got {top_pad_mb!r}")
    found = _glibc()
    if found is None:
        return False
    libc, _ = found
    if libc.mallopt(ctypes.c_int(_M_TOP_PAD), ctypes.c_int(top_pad_mb << 20)) != 1:
        return False
    _state.update(retain_freed_memory=True, top_pad_mb=top_pad_mb)
    return True


def configure_from_env() -> bool:
    """Apply :func:`retain_freed_memory` unless ``RPN_LIB_ALLOCATOR=default`` (what the command
    line does first). Returns whether it was applied.

    Raises:
        ValueError: ``RPN_LIB_ALLOCATOR`` is set to something other than ``retain`` or ``default``.
    """
    mode = os.environ.get(ENV_VAR, "retain").strip().lower()
    if mode not in ("retain", "default"):
        raise ValueError(f"{ENV_VAR} must be 'retain' or 'default', got {mode!r}")
    return mode == "retain" and retain_freed_memory()


def allocator_setting() -> dict[str, Any]:
    """What this process runs with: ``libc`` (e.g. ``"glibc 2.36"``, or None),
    ``retain_freed_memory`` and ``top_pad_mb`` (None when not set here)."""
    found = _glibc()
    return {"libc": f"glibc {found[1]}" if found else None, **_state}
