"""Tensor statistics computed in C (``tensor_stats.c``, compiled into the hook's library), for the frame readers.

Why: the per-tensor numpy calls of :meth:`TensorStats.of` cost a capture-all
about as much as the graph's compute (most tensors hold a few hundred
values).  The C function does the same two float64 passes in one call that
lets the GIL go.  It is an accelerator only: float32, float16 and int32
arrays in C order go through it, anything else (and every array where the
library cannot be loaded) through numpy, and the two agree to float64
rounding (``tests/test_store.py`` checks both against numpy).
"""

from __future__ import annotations

import ctypes
import os
import threading
from collections.abc import Callable

import numpy as np

from inspector.dump.format import TensorStats
from inspector.errors import InspectorError
from inspector.native.build import library_path
from inspector.native.preload import PRELOADED

# tensor_stats.c's enum stats_type.
TYPE_CODES = {np.dtype(np.float32): 0, np.dtype(np.float16): 1, np.dtype(np.int32): 2}

StatsOf = Callable[[np.ndarray], TensorStats]


class NativeStats:
    """:meth:`TensorStats.of` through ``ggml_inspector_tensor_stats`` where the array's type allows."""

    def __init__(self, library: ctypes.CDLL) -> None:
        function = library.ggml_inspector_tensor_stats
        function.argtypes = [ctypes.c_void_p, ctypes.c_int64, ctypes.c_int, ctypes.c_void_p, ctypes.c_void_p]
        function.restype = ctypes.c_int
        self._function = function
        # Each thread's results land in its own two arrays, made once: a call costs ~5 us less without
        # allocating them.
        self._outputs = threading.local()

    def __call__(self, array: np.ndarray) -> TensorStats:
        code = TYPE_CODES.get(array.dtype)
        if code is None or not array.flags.c_contiguous or array.size == 0:
            return TensorStats.of(array)
        outputs = self._outputs
        if not hasattr(outputs, "moments"):
            outputs.moments, outputs.counts = (ctypes.c_double * 4)(), (ctypes.c_int64 * 2)()
        moments, counts = outputs.moments, outputs.counts
        if self._function(array.ctypes.data, array.size, code, moments, counts) != 0:
            return TensorStats.of(array)
        return TensorStats(moments[0], moments[1], moments[2], moments[3], counts[0], counts[1])


def stats_function() -> StatsOf:
    """The fastest statistics this process can compute: the hook's C function (the library preloaded here, or the
    one ``build-hook`` compiled), else numpy's."""
    candidates = [os.environ.get(PRELOADED, "")]
    try:
        candidates.append(str(library_path(build=False)))
    except InspectorError:
        pass  # no headers or sources to name the library by: numpy
    for path in filter(None, candidates):
        if not os.path.isfile(path):
            continue
        try:
            library = ctypes.CDLL(path)
            return NativeStats(library)
        except (OSError, AttributeError):
            continue  # a library from before the statistics were compiled in
    return TensorStats.of
