"""Every constant the project shares, in one place (as gguf-py does).

The ggml numbers mirror the ggml that ``llama-cpp-python==0.3.36`` vendors
(ggml 0.25.3); ``tests/test_ggml_binding.py`` proves them against the library.
"""

TOOL_VERSION = "0.1.0"

# -- dump format ---------------------------------------------------------------
DUMP_FORMAT_NAME = "ggml-inspector-dump"
DUMP_FORMAT_VERSION = 2
DEFAULT_DUMP_DIR = "dumps"

# The most a reader loads whole into memory (Dump.read, for replay and the Python API); show, export,
# plot and compare stream a tensor in pieces instead (docs/format.md, Limits a reader enforces).
DEFAULT_MAX_READ_BYTES = 1 << 30

# -- ggml.h mirror ---------------------------------------------------------------
GGML_MAX_DIMS = 4
GGML_MAX_SRC = 10
GGML_MAX_OP_PARAMS = 64
GGML_MAX_NAME = 64
# sizeof(struct ggml_object): offs, size, next, type, padding[4].
GGML_OBJECT_SIZE = 32

GGML_OP_NONE = 0

GGML_TENSOR_FLAG_INPUT = 1
GGML_TENSOR_FLAG_OUTPUT = 2
GGML_TENSOR_FLAG_PARAM = 4
GGML_TENSOR_FLAG_LOSS = 8
GGML_TENSOR_FLAG_COMPUTE = 16

TENSOR_FLAG_NAMES = {
    GGML_TENSOR_FLAG_INPUT: "input",
    GGML_TENSOR_FLAG_OUTPUT: "output",
    GGML_TENSOR_FLAG_PARAM: "param",
    GGML_TENSOR_FLAG_LOSS: "loss",
    GGML_TENSOR_FLAG_COMPUTE: "compute",
}

# ggml_type values whose element layout numpy can hold as is.
GGML_TYPE_F32 = 0
GGML_TYPE_F16 = 1
GGML_TYPE_Q8_0 = 8
GGML_TYPE_I8 = 24
GGML_TYPE_I16 = 25
GGML_TYPE_I32 = 26
GGML_TYPE_I64 = 27
GGML_TYPE_F64 = 28
GGML_TYPE_BF16 = 30

# The one table between numpy and ggml: (enum ggml_type, ggml's type name, numpy dtype as np.dtype().str
# spells it).  A dump stores these types as they are and every other one (bf16, the quantized types)
# widened or dequantized to float32 (WIDENED_DTYPE).
PLAIN_GGML_TYPES = (
    (GGML_TYPE_F32, "f32", "<f4"),
    (GGML_TYPE_F16, "f16", "<f2"),
    (GGML_TYPE_F64, "f64", "<f8"),
    (GGML_TYPE_I8, "i8", "|i1"),
    (GGML_TYPE_I16, "i16", "<i2"),
    (GGML_TYPE_I32, "i32", "<i4"),
    (GGML_TYPE_I64, "i64", "<i8"),
)
NUMPY_DTYPE_OF_GGML_TYPE = {ggml_type: dtype for ggml_type, _name, dtype in PLAIN_GGML_TYPES}
NUMPY_DTYPE_OF_TYPE_NAME = {name: dtype for _type, name, dtype in PLAIN_GGML_TYPES}
GGML_TYPE_OF_TYPE_NAME = {name: ggml_type for ggml_type, name, _dtype in PLAIN_GGML_TYPES}
WIDENED_DTYPE = "<f4"

# llama.h's enum llama_ftype (general.file_type in a GGUF): what a model's weights mostly are, named as gguf-py
# names them without its MOSTLY_/ALL_ prefix.  Ours so that recording a model's facts does not import gguf-py
# (inspector.ggml.types says why); a number missing here is looked up there.
LLAMA_FTYPE_NAMES = {
    0: "F32", 1: "F16", 2: "Q4_0", 3: "Q4_1", 7: "Q8_0", 8: "Q5_0", 9: "Q5_1", 10: "Q2_K", 11: "Q3_K_S",
    12: "Q3_K_M", 13: "Q3_K_L", 14: "Q4_K_S", 15: "Q4_K_M", 16: "Q5_K_S", 17: "Q5_K_M", 18: "Q6_K", 19: "IQ2_XXS",
    20: "IQ2_XS", 21: "Q2_K_S", 22: "IQ3_XS", 23: "IQ3_XXS", 24: "IQ1_S", 25: "IQ4_NL", 26: "IQ3_S", 27: "IQ3_M",
    28: "IQ2_S", 29: "IQ2_M", 30: "IQ4_XS", 31: "IQ1_M", 32: "BF16", 36: "TQ1_0", 37: "TQ2_0",
}

# ggml_backend_dev_type
GGML_BACKEND_DEVICE_TYPES = {0: "CPU", 1: "GPU", 2: "IGPU", 3: "ACCEL", 4: "META"}

# -- llama.cpp runner defaults --------------------------------------------------
# llama.cpp's own defaults (common/common.h): n_ctx 0 is the model's training context.
DEFAULT_N_CTX = 0
DEFAULT_N_BATCH = 2048
DEFAULT_N_UBATCH = 512
# LLAMA_DEFAULT_SEED; recorded only: the runner samples greedily.
DEFAULT_SEED = 0xFFFFFFFF

# Spellings llama.cpp's -fa accepts (common/arg.cpp: is_truthy, is_falsey, is_autoy), by meaning.
FLASH_ATTN_SPELLINGS = {
    "on": ("on", "enabled", "true", "1"),
    "off": ("off", "disabled", "false", "0"),
    "auto": ("auto", "-1"),
}
# llama.cpp's -lm/--load-mode values and their enum llama_load_mode numbers (llama.h).
LOAD_MODES = {"auto": -1, "none": 0, "mmap": 1, "mlock": 2, "mmap+mlock": 3, "dio": 4}
KV_CACHE_TYPES = ("f32", "f16", "bf16", "q8_0", "q4_0", "q4_1", "q5_0", "q5_1", "iq4_nl")

# -- mllama ------------------------------------------------------------------------
# "hf-path" mimics transformers' load_image (EXIF rotation, alpha dropped).
MLLAMA_IMAGE_LOADERS = ("pil", "hf-path")
# mllama generate: how the language model gets the vision output (late-read: the original port's bug).
MLLAMA_VISION_OUTPUTS = ("copy", "late-read")
# mllama convert --outtype: float types, and quantized ones by llama.cpp's rules (inspector/mllama/outtypes.py).
MLLAMA_OUTTYPES = ("f32", "f16", "bf16", "q8_0", "q6_k", "q4_k", "q4_k_m")

# -- bounded reading of untrusted dumps and frame streams (issue 19) ------------------
# Bytes per piece when a reader streams a tensor: the memory show, export, plot and compare hold.
STREAM_CHUNK_BYTES = 4 << 20
# A compressed /tensors stream may declare at most this many bytes per stored byte, once it declares
# more than COMPRESSION_FREE_BYTES: real captures compress far less (docs/format.md), while gzip'd
# zeros reach ~1000:1 and let a small file claim gigabytes.
MAX_COMPRESSION_RATIO = 64
COMPRESSION_FREE_BYTES = 256 << 20
# HDF5 filters the writer uses on /tensors (deflate is gzip, 32000 is h5py's lzf); any other is refused.
ALLOWED_HDF5_FILTERS = {1: "gzip", 32000: "lzf"}
# The most leading (and trailing) values show prints: a list of Python floats costs ~30 bytes a value.
MAX_SHOWN_VALUES = 1 << 20
# The most cells a heatmap draws per axis; a larger slice is subsampled (every k-th row/column), as
# matplotlib's nearest-neighbour drawing of more cells than pixels would show it anyway.
MAX_HEATMAP_SIDE = 1024
# A frame's tensor may materialise into more bytes than it carried (overlapping or zero strides, a
# view ggml allows) by at most this much; beyond it the layout is refused.
MAX_FRAME_EXPANSION_BYTES = 64 << 20

# -- untrusted GGUFs, images, templates and options (issue 19) ---------------------
# Images: at most this many pixels are decoded (a 48 MP photo fits; RGBA of it is 268 MB).
MAX_IMAGE_PIXELS = 8192 * 8192
# mllama tiles: Llama 3.2 Vision (config max_num_tiles, HF's max_image_tiles) uses 4 tiles of 560 pixels;
# up to 4x either is accepted, and the canvas (tiles x tile area) at most 16 tiles of 560.
MLLAMA_MAX_TILES = 16
MLLAMA_MAX_TILE_SIZE = 4 * 560
MLLAMA_MAX_CANVAS_PIXELS = 16 * 560 * 560
# Jinja chat templates: rendered text at most this many characters, or this multiple of the template and
# messages' length if larger; at most this many seconds; at most this many bytes of new memory.
MAX_TEMPLATE_OUTPUT_CHARS = 1024 * 1024
TEMPLATE_OUTPUT_FACTOR = 4
MAX_TEMPLATE_SECONDS = 5.0
MAX_TEMPLATE_MEMORY_BYTES = 512 * 1024**2
# ggml.h's GGML_MAX_N_THREADS: ggml's thread pool has room for no more (beyond it, SIGSEGV).
GGML_MAX_N_THREADS = 512
# Threads beyond this multiple of the machine's cores are refused: ggml's workers spin, so more only slows.
MAX_THREADS_PER_CORE = 4
# llama.cpp's n_ctx, n_batch, n_ubatch, n_predict are int32 (positions are llama_pos, an int32_t), and so are
# a dump index's node and occurrence columns.
LLAMA_MAX_INT32 = 2**31 - 1

# -- replay ------------------------------------------------------------------------
# The most bytes one replay builds for a node (its sources' extents and its output, per placement): a dump
# that declares more is refused before anything is allocated. A real model's largest weight (an f16
# embedding of 128k x 4k) is 1 GiB.
REPLAY_MAX_BYTES = 2 * 1024**3

# The ``runner`` a reference implementation's dump records (``capture-hf``): a tensor its name map does not
# name is absent by design, not missing.
REFERENCE_RUNNER = "capture-hf"

# ggml ops that compute nothing: their output is a view of their source's memory.
VIEW_OPS = frozenset({"VIEW", "RESHAPE", "PERMUTE", "TRANSPOSE"})

# A KV-cache write is stored as at most this many runs of consecutive destination rows: in the order written, or in
# ascending order when that has more runs (a transposed V cache writes one value per row, token by token); a write
# of more runs still is stored whole.  The native hook's MAX_WRITTEN_RUNS.
MAX_WRITTEN_RUNS = 16384
# A view over parts of rows (nb[0] one element) whose rows hold less than half the bytes it spans is read row by
# row, at most this many rows; otherwise the bytes it spans are read.  The native hook's MAX_PACKED_ROWS.
MAX_PACKED_ROWS = 65536
# In ggml-inspector's own process the native hook lends a host tensor of at least this many bytes by address (the
# reader copies it; inspector/native/inprocess.py) instead of sending it through the socket.  Its LEND_MIN_BYTES.
LEND_MIN_BYTES = 1 << 20
