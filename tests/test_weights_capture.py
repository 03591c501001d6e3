"""Weights in any buffer: repacked quantized weights are read from the model file, never crash.

The CPU backend moves Q4_0, Q4_K and IQ4_NL matrices whose ne[1] is a
multiple of 8 into its ``CPU_REPACK`` buffer on AVX2 machines; that buffer
has no ``get_tensor``.  Expected values are gguf-py's dequantization of the
file's bytes, independent of llama.cpp and of our reader.
"""

from __future__ import annotations

import ctypes
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
from conftest import PROMPT, run_capture, weights
from gguf import GGMLQuantizationType

from inspector import open_dump
from inspector.errors import InspectorError
from inspector.ggml import Tensor, load, read_tensor
from inspector.ggml.abi import GgmlInitParams
from inspector.ggml.readout import UnreadableTensor
from inspector.gguf.header import read_header
from inspector.tiny_models import TinyLlamaSpec, write_tiny_llama
from inspector.tiny_models.llama import QUANT_MIX

REPACKED_ON_AVX2 = {GGMLQuantizationType.Q4_0, GGMLQuantizationType.Q4_K, GGMLQuantizationType.IQ4_NL}
SPEC = TinyLlamaSpec(dtype="quant", n_embd=256, n_ff=512, n_head=4, n_head_kv=2, n_layer=2, seed=5)


def cpu_has_avx2() -> bool:
    return " avx2 " in f" {Path('/proc/cpuinfo').read_text().replace(chr(10), ' ')} "


@pytest.fixture(scope="module")
def quant_model(tmp_path_factory) -> Path:
    return write_tiny_llama(tmp_path_factory.mktemp("quant") / "quant.gguf", SPEC)


def test_selected_weights_equal_the_files_dequantized_bytes(quant_model, tmp_path):
    summary = run_capture(quant_model, tmp_path / "w.h5", ("*.weight",))
    assert not summary.skipped
    expected = weights(quant_model)
    header = read_header(quant_model)
    with open_dump(summary.path) as dump:
        captured = {e.name: e for e in dump}
        assert set(captured) == set(expected)
        for name, entry in captured.items():
            np.testing.assert_array_equal(dump.read(entry), expected[name], err_msg=name)
            record = dump.metadata(entry)
            quant = GGMLQuantizationType(header.tensors[name].ggml_type)
            repackable = quant in REPACKED_ON_AVX2 and header.tensors[name].ne[1] % 8 == 0 and cpu_has_avx2()
            assert (entry.buffer_type == "CPU_REPACK") == repackable, name
            assert record["read_from"] == ("file" if repackable else "buffer"), name
        assert any(e.buffer_type == "CPU_REPACK" for e in captured.values()) == cpu_has_avx2()


def test_the_mix_holds_the_types_a_q4_k_m_conversion_uses(quant_model):
    types = {info.type_name for info in read_header(quant_model).tensors.values()}
    assert {"q4_0", "q4_K", "iq4_nl", "q6_K", "q8_0"} <= types
    assert set(QUANT_MIX.values()) >= REPACKED_ON_AVX2


def test_activations_of_a_repacked_model_follow_the_file_weights(quant_model, tmp_path):
    """attn_norm-0 times the dequantized Q4_0 attn_q: the repacked matmul computes with the file's values."""
    summary = run_capture(quant_model, tmp_path / "a.h5", ("attn_norm-0", "Qcur-0"), prompt=PROMPT)
    w = weights(quant_model)["blk.0.attn_q.weight"]
    with open_dump(summary.path) as dump:
        norm = dump.read("attn_norm-0").astype(np.float64)
        q = dump.read("Qcur-0", occurrence=0).astype(np.float64)
    expected = norm @ w.astype(np.float64).T
    # The repacked kernel quantizes activations to Q8_0 first: agreement to Q8 rounding, not bits.
    assert np.linalg.norm(q - expected) / np.linalg.norm(expected) < 2e-2


def test_a_tensor_with_data_but_no_buffer_is_refused_not_read():
    """A tensor of a plain ggml context has data and no backend buffer: ggml_backend_tensor_get would abort."""
    lib = load()
    context = lib.base.ggml_init(GgmlInitParams(1 << 16, None, False))
    try:
        address = lib.base.ggml_new_tensor_1d(context, 0, 8)
        tensor = Tensor(lib, address)
        assert tensor.data and not tensor.buffer
        with pytest.raises(UnreadableTensor, match="not allocated"):
            read_tensor(tensor)
    finally:
        lib.base.ggml_free(context)


def test_an_unexpected_ggml_tensor_layout_is_refused_in_one_line(tmp_path):
    """A library whose ggml_tensor_overhead differs (another ggml) is refused before any tensor is read."""
    source = tmp_path / "other.c"
    source.write_text("#include <stddef.h>\nsize_t ggml_tensor_overhead(void) { return 400; }\n")
    library = tmp_path / "libother.so"
    subprocess.run(["cc", "-shared", "-fPIC", "-o", str(library), str(source)], check=True)
    from inspector.ggml.library import _check_tensor_layout

    other = ctypes.CDLL(str(library))
    other.ggml_tensor_overhead.restype = ctypes.c_size_t
    with pytest.raises(InspectorError) as raised:
        _check_tensor_layout(other)
    message = str(raised.value)
    assert "\n" not in message and "368 bytes" in message and "llama-cpp-python 0.3.36" in message
    # The real library passes the same check.
    _check_tensor_layout(load().base)


def test_capture_of_repacked_weights_runs_in_a_clean_process(quant_model, tmp_path):
    """The original crash was a SIGSEGV of the whole process: run the CLI and check its exit status."""
    out = tmp_path / "cli.h5"
    script = textwrap.dedent(f"""
        import sys
        from inspector.cli import main
        sys.argv = ["ggml-inspector", "capture", {str(quant_model)!r}, "-p", "hi", "-T", "blk.0.*",
                    "--threads", "1", "-o", {str(out)!r}]
        main()
    """)
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    with open_dump(out) as dump:
        assert any(e.buffer_type == "CPU_REPACK" for e in dump) == cpu_has_avx2()
