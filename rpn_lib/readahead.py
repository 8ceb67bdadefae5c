"""Reading ahead: prepare the next items in background threads while the caller works on this one.

Reading a ``.nii.gz`` file and resampling it to the model grid takes tens of milliseconds
of CPU time per volume: a good part of a detection's time on a CPU (``rpn-lib bench``
measures both: its "reading files ahead" table), and time a GPU would wait. Done one after
the other, the network waits for the disk and the resampling. :func:`read_ahead` overlaps
them (``rpn-lib detect`` and :meth:`rpn_lib.detect.Detector.detect_files` use it, and so do
``rpn-lib evaluate`` and :func:`rpn_lib.evaluate.evaluate` for the cases of a dataset).
NIfTI reading (zlib), NumPy and SciPy's resampling release Python's global interpreter lock
for most of their work, so the threads run beside each other and beside the network.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable, Generator, Iterable
from concurrent.futures import Future, ThreadPoolExecutor
from typing import TypeVar

_T = TypeVar("_T")
_R = TypeVar("_R")

_END = object()

READ_AHEAD = 4
"""Files ``rpn-lib detect`` and :meth:`rpn_lib.detect.Detector.detect_files` (and cases
``rpn-lib evaluate`` and :func:`rpn_lib.evaluate.evaluate`) read ahead by default, each in
its own thread. On a GPU the network leaves the CPU's cores free and is expected to take
less time per volume than reading and resampling one file, so several are read at once (not
yet timed on a GPU). On a CPU that detection keeps busy, the threads can
only use what the network leaves idle: ``rpn-lib bench`` times 0, 1 and this many files
ahead (chapter *Performance*)."""


def _done(load: Callable[[_T], _R], item: _T) -> Future[_R]:
    """``load(item)`` run now, in this thread, as a finished future (holding its exception if it raised)."""
    fut: Future[_R] = Future()
    try:
        fut.set_result(load(item))
    except Exception as e:  # handed to the caller by fut.result(), as from the thread
        fut.set_exception(e)
    return fut


def read_ahead(items: Iterable[_T], load: Callable[[_T], _R],
               depth: int = READ_AHEAD) -> Generator[tuple[_T, Future[_R]], None, None]:
    """``(item, future of load(item))`` for each item, in order, with up to ``depth`` items
    loading ahead, in ``depth`` background threads.

    ``future.result()`` gives ``load(item)`` or raises its exception (in the caller's thread),
    so one item that fails to load does not stop the others. Closing the generator early
    (``close()``, or a ``break`` out of a ``for`` loop once nothing else refers to it)
    cancels the loads not yet started.

    ``load`` runs in another thread: it must not touch state the loop changes, and warnings
    it raises cannot be told apart from the caller's (``warnings.catch_warnings`` is global
    to the process); return them as data instead (as :meth:`rpn_lib.detect.Detector.read`
    does).

    Args:
        items: what to load, e.g. file paths.
        load: the function that loads one item.
        depth: items loaded ahead of the one in use, and threads loading them; 0 loads
            each item in the caller's thread when its turn comes (no thread).

    Yields:
        ``(item, future)`` pairs, in the order of ``items``.

    Raises:
        ValueError: ``depth`` is negative.
    """
    if depth < 0:
        raise ValueError(f"depth must be >= 0, got {depth}")
    return _read_ahead(items, load, depth)


def _read_ahead(items: Iterable[_T], load: Callable[[_T], _R],
                depth: int) -> Generator[tuple[_T, Future[_R]], None, None]:
    """:func:`read_ahead` once its arguments are checked."""
    if depth == 0:
        for item in items:
            yield item, _done(load, item)
        return
    it = iter(items)
    pending: deque[tuple[_T, Future[_R]]] = deque()
    pool = ThreadPoolExecutor(max_workers=depth, thread_name_prefix="rpn-lib-read-ahead")
    try:
        for item in it:  # the item in use and `depth` more
            pending.append((item, pool.submit(load, item)))
            if len(pending) > depth:
                break
        while pending:
            yield pending.popleft()  # `depth` more are loading meanwhile
            nxt = next(it, _END)
            if nxt is not _END:
                pending.append((nxt, pool.submit(load, nxt)))  # type: ignore[arg-type]
    finally:
        pool.shutdown(wait=False, cancel_futures=True)
