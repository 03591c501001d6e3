"""The writer thread: order kept, memory bounded by back-pressure, failures surfaced, nothing lost on stop."""

from __future__ import annotations

import time

import numpy as np
import pytest

from inspector import open_dump
from inspector.dump.background_writer import BackgroundWriter
from inspector.dump.record import TensorRecord
from inspector.dump.writer import DumpWriter
from inspector.files.disk_space import DiskFull


def tensor(name: str, eval_index: int, node: int, value: float, size: int = 64) -> tuple[TensorRecord, np.ndarray]:
    array = np.full(size, value, dtype=np.float32)
    return TensorRecord.for_array(name, array, eval_index, node, "ADD"), array


def test_tensors_and_evaluations_land_in_the_order_they_were_queued(tmp_path):
    path = tmp_path / "order.h5"
    writer = BackgroundWriter(DumpWriter(path, {}, {}))
    expected = []
    for eval_index in range(3):
        assert writer.begin_evaluation("prompt", {"n_tokens": eval_index}) == eval_index
        for node in range(50):
            writer.write(*tensor(f"t{node}", eval_index, node, eval_index * 100 + node))
            expected.append((eval_index, f"t{node}", eval_index * 100 + node))
    writer.close(True)
    with open_dump(path) as dump:
        assert dump.complete
        assert [e["n_tokens"] for e in dump.evaluations] == [0, 1, 2]
        got = [(e.eval_index, e.name, float(dump.read(e)[0])) for e in dump]
    assert got == expected


class SlowDumpWriter(DumpWriter):
    """A writer whose disk is slow: each tensor takes a while, so the queue fills up."""

    def write(self, record: TensorRecord, array: np.ndarray) -> None:
        time.sleep(0.02)
        super().write(record, array)


def test_a_fast_producer_is_held_back_by_the_byte_budget(tmp_path):
    """With a budget of four tensors, the producer never runs more than four ahead of the disk."""
    size = 1024
    nbytes = size * 4
    writer = BackgroundWriter(SlowDumpWriter(tmp_path / "slow.h5", {}, {}), max_bytes=4 * nbytes)
    writer.begin_evaluation("prompt", {})
    ahead = []
    for node in range(40):
        writer.write(*tensor(f"t{node}", 0, node, node, size))
        ahead.append(writer._queued_bytes)
    writer.close(True)
    assert max(ahead) <= 4 * nbytes
    assert max(ahead) == 4 * nbytes  # the budget was reached: the producer did wait
    with open_dump(tmp_path / "slow.h5") as dump:
        assert len(dump) == 40


def test_a_writer_failure_is_raised_to_the_producer_and_the_dump_stays_valid(tmp_path):
    """A file-size limit the writer cannot pass: the producer's next write raises DiskFull."""
    import subprocess
    import sys
    import textwrap

    path = tmp_path / "limited.h5"
    script = textwrap.dedent(f"""
        import resource, signal
        import numpy as np
        from inspector.dump.background_writer import BackgroundWriter
        from inspector.files.disk_space import DiskFull
        from inspector.dump.writer import DumpWriter
        from inspector.dump.record import TensorRecord
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        resource.setrlimit(resource.RLIMIT_FSIZE, (2 * 1024 * 1024, 2 * 1024 * 1024))
        writer = BackgroundWriter(DumpWriter({str(path)!r}, {{}}, {{}}))
        writer.begin_evaluation("prompt", {{}})
        queued = 0
        try:
            for node in range(1000):
                array = np.full(50_000, node, dtype=np.float32)
                writer.write(TensorRecord.for_array(f"t{{node}}", array, 0, node, "ADD"), array)
                queued += 1
        except DiskFull as full:
            print("raised", queued, full)
        writer.close(False, "disk full")
        print("written", writer.tensor_count)
    """)
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0 and result.stderr == "", result.stderr
    raised, written = result.stdout.splitlines()
    assert raised.startswith("raised") and "file size limit reached" in raised
    count = int(written.split()[1])
    assert 0 < count <= int(raised.split()[1])
    with open_dump(path) as dump:
        assert not dump.complete and len(dump) == count
        assert [float(dump.read(e)[0]) for e in dump] == list(range(count))


def test_stopping_mid_queue_writes_everything_queued(tmp_path):
    """Ctrl-C while tensors wait: close(False, "interrupted") still writes every queued tensor."""
    path = tmp_path / "stopped.h5"
    writer = BackgroundWriter(SlowDumpWriter(path, {}, {}))
    writer.begin_evaluation("prompt", {})
    for node in range(25):
        writer.write(*tensor(f"t{node}", 0, node, node))
    assert writer._queued_bytes > 0  # still queued when the stop comes
    writer.close(False, "interrupted")
    with open_dump(path) as dump:
        assert not dump.complete and dump.incomplete_reason == "interrupted"
        assert [e.name for e in dump] == [f"t{node}" for node in range(25)]


def test_a_failure_stops_later_writes(tmp_path):
    writer = BackgroundWriter(DumpWriter(tmp_path / "x.h5", {}, {}))
    writer.begin_evaluation("prompt", {})
    record, array = tensor("t", 5, 0, 1.0)  # evaluation 5 was never opened: the writer refuses it
    writer.write(record, array)
    writer.drain()
    with pytest.raises(ValueError, match="evaluation 5"):
        writer.write(*tensor("u", 0, 1, 1.0))
    writer.close(True)
    with open_dump(tmp_path / "x.h5") as dump:
        assert not dump.complete and "evaluation 5" in dump.incomplete_reason
    assert not isinstance(writer.error, DiskFull)
