"""Every constant the project shares, in one place (as gguf-py does).

The ggml numbers mirror the ggml that ``llama-cpp-python==0.3.36`` vendors
(ggml 0.25.3); ``tests/test_ggml_binding.py`` proves them against the library.
"""

TOOL_VERSION = "0.1.0"

# -- dump format ---------------------------------------------------------------
DUMP_FORMAT_NAME = "ggml-inspector-dump"
DUMP_FORMAT_VERSION = 2
DEFAULT_DUMP_DIR = "dumps"

# Refuse to load one dataset larger than this from an untrusted dump unless asked.
DEFAULT_MAX_READ_BYTES = 8 * 1024**3

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

NUMPY_DTYPE_OF_GGML_TYPE = {
    GGML_TYPE_F32: "<f4",
    GGML_TYPE_F16: "<f2",
    GGML_TYPE_I8: "i1",
    GGML_TYPE_I16: "<i2",
    GGML_TYPE_I32: "<i4",
    GGML_TYPE_I64: "<i8",
    GGML_TYPE_F64: "<f8",
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
