"""The dump's on-disk vocabulary, shared by the writer and the reader: layout, index table, digests, stats.

Layout (``docs/format.md`` is the reference)::

    /                 attrs: format, format_version, tool_version, created, complete,
                             incomplete_reason, config, system, result, skipped (JSON)
    /evals/000000     one group per graph evaluation; attrs: index, kind, info (JSON)
    /tensors          every tensor's bytes, one after the other (C order, the index row's
                      dtype and shape); a small sample per tensor in a stats-only dump
    /index            compound table, one row per tensor: where its bytes are, what they are
    /records          one JSON string per tensor (row i = sequence i): the full TensorRecord

Why one byte stream and not a dataset per tensor: creating an HDF5 dataset
costs ~100-200 us, which for the 5,000 tensors of a capture-all was the
largest part of the writer's time; appending to one stream costs ~8 us a
tensor.  Names never enter HDF5 paths, so any tensor name round-trips.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import h5py
import numpy as np
import xxhash

from inspector.errors import InspectorError

STR_DTYPE = h5py.string_dtype("utf-8")

INDEX_DTYPE = np.dtype([
    ("eval", "<i4"),
    ("node", "<i4"),
    ("occurrence", "<i4"),
    ("seq", "<i8"),
    ("name", STR_DTYPE),
    ("op", STR_DTYPE),
    ("ggml_type", STR_DTYPE),
    ("ndim", "<i4"),
    ("shape", "<i8", (4,)),
    ("dtype", STR_DTYPE),
    ("offset", "<i8"),
    ("buffer", STR_DTYPE),
    ("buffer_type", STR_DTYPE),
    ("storage", STR_DTYPE),
    ("stored", STR_DTYPE),
    ("is_leaf", "?"),
    ("nbytes", "<i8"),
    ("min", "<f8"),
    ("max", "<f8"),
    ("mean", "<f8"),
    ("std", "<f8"),
    ("n_nan", "<i8"),
    ("n_inf", "<i8"),
    ("digest", STR_DTYPE),
])
# What a tensor's dataset holds: all of it, or (``--stats-only``) its first SAMPLE_ELEMENTS values.
STORED_FULL = "full"
STORED_STATS = "stats"
SAMPLE_ELEMENTS = 16
# Elements per step of the statistics pass (bounds the NaN/Inf masks of a chunk that needs them).
STATS_CHUNK = 1 << 18
# Floating tensors of at most this many values take TensorStats' short path.
SMALL_STATS = 1 << 14
# /tensors is chunked in pieces of this size: the unit of compression and of partial reads.
CHUNK_BYTES = 1 << 20
TENSORS_DATASET = "tensors"


StatsOf = Callable[[np.ndarray], "TensorStats"]
"""How a writer computes a tensor's statistics: :meth:`TensorStats.of`, or the same quantities computed elsewhere."""


def digest_of(array: np.ndarray) -> str:
    """xxh3-64 of the array's C-contiguous bytes: fast (~15 GB/s), enough to tell equal from different."""
    return xxhash.xxh3_64_hexdigest(np.ascontiguousarray(array).data)


@dataclass(frozen=True)
class Compression:
    """How tensor datasets are compressed: ``none``, ``lzf`` or ``gzip[:level]`` (docs/performance.md)."""

    name: str = "none"
    level: int | None = None

    @classmethod
    def parse(cls, text: str) -> Compression:
        name, _, level = text.partition(":")
        if name in ("none", "lzf") and not level:
            return cls(name)
        if name == "gzip":
            if not level:
                return cls("gzip", 4)
            if level.isdigit() and 0 <= int(level) <= 9:
                return cls("gzip", int(level))
        raise InspectorError(f"--compression takes none, lzf or gzip[:0-9], not {text!r}")

    def dataset_options(self) -> dict[str, object]:
        """h5py create_dataset keywords for the /tensors byte stream."""
        options: dict[str, object] = {"chunks": (CHUNK_BYTES,)}
        if self.name != "none":
            options["compression"] = self.name
            if self.level is not None:
                options["compression_opts"] = self.level
        return options


NO_COMPRESSION = Compression()


@dataclass(frozen=True)
class TensorStats:
    """Summary statistics over the finite elements, plus counts of the rest."""

    min: float
    max: float
    mean: float
    std: float
    n_nan: int
    n_inf: int

    @classmethod
    @np.errstate(over="ignore", invalid="ignore")  # float64 extremes overflow to inf: a statistic, not a warning
    def of(cls, array: np.ndarray) -> TensorStats:
        """One streaming pass in chunks: float64 accumulators, no 8-byte-per-element temporaries.

        Mean and variance combine per-chunk (mean, M2) pairs (Chan et al.), which
        stays accurate where one running sum of squares would cancel.  A chunk whose
        float32 min and max are finite holds no NaN or Inf, so masks are only
        built for chunks that need them.
        """
        flat = np.asarray(array).reshape(-1)
        if 0 < flat.size <= SMALL_STATS and flat.dtype.kind == "f":
            small = cls._small(flat)
            if small is not None:
                return small
        count, mean, m2 = 0, 0.0, 0.0
        low, high = math.inf, -math.inf
        n_nan = n_inf = 0
        for start in range(0, flat.size, STATS_CHUNK):
            chunk = flat[start:start + STATS_CHUNK]
            if chunk.dtype == np.float16:
                # numpy reduces float16 without SIMD, ~8x slower than converting first (exact).
                chunk = chunk.astype(np.float32)
            if chunk.dtype.kind == "f":
                chunk_min, chunk_max = chunk.min(), chunk.max()
                if not (math.isfinite(chunk_min) and math.isfinite(chunk_max)):
                    nan_mask = np.isnan(chunk)
                    inf_mask = np.isinf(chunk)
                    n_nan += int(nan_mask.sum())
                    n_inf += int(inf_mask.sum())
                    chunk = chunk[~(nan_mask | inf_mask)]
                    if not chunk.size:
                        continue
                    chunk_min, chunk_max = chunk.min(), chunk.max()
            else:
                chunk_min, chunk_max = chunk.min(), chunk.max()
            size = chunk.size
            # Shifted to the chunk's centre, so a large common offset does not cancel in the
            # sum of squares; the float64 temporary is one chunk, not the tensor.
            centre = (float(chunk_min) + float(chunk_max)) / 2
            shifted = np.subtract(chunk, centre, dtype=np.float64)
            shifted_mean = float(shifted.sum()) / size
            chunk_mean = centre + shifted_mean
            # einsum, not ``@``: a BLAS dot wakes OpenBLAS's threads, which then spin beside the graph being
            # captured (40% of a 2-core capture's CPU time, measured with perf).
            chunk_m2 = max(float(np.einsum("i,i->", shifted, shifted)) - size * shifted_mean**2, 0.0)
            total = count + size
            delta = chunk_mean - mean
            mean += delta * size / total
            m2 += chunk_m2 + delta * delta * count * size / total
            count = total
            low, high = min(low, float(chunk_min)), max(high, float(chunk_max))
        if count == 0:
            nan = float("nan")
            return cls(nan, nan, nan, nan, n_nan, n_inf)
        return cls(low, high, mean, math.sqrt(m2 / count), n_nan, n_inf)

    @classmethod
    def _small(cls, flat: np.ndarray) -> TensorStats | None:
        """A small all-finite floating tensor in a few numpy calls; None when it holds NaN or Inf.

        Why: most of a graph's tensors hold a few hundred values (the median of a
        capture-all is 768), where the chunked pass's per-call overhead is the
        cost.  Widened to float64 once (a small temporary), the mean and numpy's
        two-pass standard deviation are as exact as the streaming pass.
        """
        wide = flat.astype(np.float64)
        low, high = float(wide.min()), float(wide.max())
        if not (math.isfinite(low) and math.isfinite(high)):
            return None  # NaN or Inf: the streaming pass counts and masks them
        return cls(low, high, float(wide.mean()), float(wide.std()), 0, 0)


