"""scripts/gpu_check.sh cannot rot unnoticed: its dry run walks every step on the CPU (install
check, environment, CUDA test selection by the ``cuda`` marker, benchmark arguments) with the
CUDA parts recorded as "no GPU", and always leaves a summary; the benchmark writer streams
rows as they are measured."""
from __future__ import annotations

import csv
import os
import re
import subprocess
import sys

import pytest
import torch

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
STEPS = ["install", "environment", "cuda_tests_collected", "cuda_tests", "bench_args", "bench_ops", "roofline_model",
         "bench_train"]


def run_check(out, *args, **env):
    return subprocess.run(["bash", os.path.join(ROOT, "scripts", "gpu_check.sh"), "--out", str(out), *args],
                          cwd=ROOT, capture_output=True, text=True, timeout=600,
                          env={**os.environ, "PYTHON": sys.executable, **env})


@pytest.fixture(scope="module")
def dry_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("gpu_check")
    return out, run_check(out, "--dry-run")


def _rows(summary: str) -> dict[str, str]:
    return {m.group(1): m.group(2) for m in re.finditer(r"^\| (\S+) \| ([^|]+) \|", summary, re.M)
            if m.group(1) != "step"}


def test_dry_run_walks_every_step(dry_run):
    out, proc = dry_run
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    summary = (out / "summary.md").read_text()
    rows = _rows(summary)
    assert list(rows) == STEPS, summary
    for step in ("install", "environment", "cuda_tests_collected", "bench_args", "roofline_model"):
        assert rows[step].strip() == "ok", (step, summary)
    for step in ("cuda_tests", "bench_ops", "bench_train"):
        assert rows[step].startswith("no GPU"), (step, summary)
    for step in STEPS:
        assert (out / "logs" / f"{step}.log").stat().st_size > 0, step
    assert "CUBLAS_WORKSPACE_CONFIG=:4096:8" in summary and "NVIDIA_TF32_OVERRIDE=0" in summary
    assert f"torch {torch.__version__}" in summary and "dry run" in summary


def test_dry_run_writes_the_roofline_model(dry_run):
    """The roofline table's model columns without a GPU: launches per route, the fewest
    programs of a pixel-sweep launch (>= 4 per SM of an H100), modelled bytes; nothing timed."""
    pytest.importorskip("triton")
    out, _ = dry_run
    with open(out / "roofline.csv", newline="") as fh:
        rows = {(r["op"], r["dtype"]): r for r in csv.DictReader(fh)}
    assert set(rows) == {(op, dt) for op in ("loss", "gate") for dt in ("float32", "bfloat16")}
    for (op, _), r in rows.items():
        assert int(r["launches_model"]) == (3 if op == "loss" else 6)
        assert int(r["min_programs"]) >= 4 * 132
        assert r["time_us"] == "not measured" and r["op_syncs"] == "not measured"
    # loss fp32: logits read twice and gradient written once (3 x 8.4 MB x 2 classes) + int64 labels
    # read once and as a uint8 copy written and read (8 + 2 bytes a pixel) + small partials
    z = 8 * 2 * 512 * 512 * 4
    labels = 8 * 512 * 512 * (8 + 2)
    assert 3 * z + labels <= float(rows[("loss", "float32")]["model_MB"]) * 1e6 <= 1.02 * (3 * z + labels)
    assert "no GPU (model only)" in (out / "roofline.md").read_text()


def test_dry_run_selects_exactly_the_cuda_tests(dry_run):
    out, _ = dry_run
    collected = (out / "logs" / "cuda_tests_collected.log").read_text()
    ids = [line for line in collected.splitlines() if "::" in line]
    # CUDA tests of every file that has them, test_triton_launch.py's included
    for must in ("tests/test_triton_launch.py::test_cuda_deterministic_gate_repeats_bitwise",
                 "tests/test_triton_launch.py::test_cuda_reports_out_of_range_labels_without_a_sync",
                 "tests/test_triton_launch.py::test_cuda_graph_capture_turns_bad_labels_into_nan",
                 "tests/test_cuda.py::test_triton_is_bitwise_deterministic_run_to_run[cuda]",
                 "tests/test_unified_focal_loss.py::test_cuda_gradcheck_and_opcheck",
                 "tests/test_attention_gate.py::test_cuda_compile_fullgraph",
                 "tests/test_nn_attention.py::test_modules_on_cuda[2]"):
        assert must in ids, must
    # and no CPU test: the CPU twins of tests/test_cuda.py, test_amp.py's CPU training
    assert not [i for i in ids if "check_on_cpu" in i or i.startswith("tests/test_amp.py")], ids
    count = int(re.search(r"(\d+) CUDA tests selected", (out / "summary.md").read_text()).group(1))
    assert count == len(ids) >= 50


def test_summary_is_written_when_the_budget_runs_out(tmp_path):
    proc = run_check(tmp_path, "--dry-run", UNIMRI_GPU_BUDGET_S="1")
    assert proc.returncode == 1
    rows = _rows((tmp_path / "summary.md").read_text())
    assert rows["bench_args"].startswith("NOT RUN (budget spent)"), rows


def test_gpu_run_without_a_gpu_says_so(tmp_path):
    if torch.cuda.is_available():
        pytest.skip("a GPU is present")
    proc = run_check(tmp_path)
    assert proc.returncode == 2 and "torch.cuda.is_available() is False" in proc.stderr


def test_unknown_argument_is_refused(tmp_path):
    proc = run_check(tmp_path, "--fast")
    assert proc.returncode == 2 and "unknown argument '--fast'" in proc.stderr


def test_benchmark_rows_reach_the_csv_as_measured(tmp_path, monkeypatch):
    sys.path.insert(0, os.path.join(ROOT, "benchmarks"))
    import harness

    rec = harness.Recorder("cpu")
    path = tmp_path / "loss_cpu.csv"
    rec.stream_to(str(path))
    rec.add("op", "provider", "forward", "time", "ms", "8x8", 1.5)
    rows = list(csv.DictReader(path.open()))
    assert [(r["op"], float(r["p50"])) for r in rows] == [("op", 1.5)]  # before write()
    rec.add("op", "other", "forward", "time", "ms", "8x8", 2.5)
    rec.write(str(tmp_path), "loss_cpu")
    assert [float(r["p50"]) for r in csv.DictReader(path.open())] == [1.5, 2.5]
    monkeypatch.delenv("UNIMRI_BENCH_COMPILE", raising=False)
    assert not harness.compile_wanted()
    monkeypatch.setenv("UNIMRI_BENCH_COMPILE", "1")
    assert harness.compile_wanted()


def test_install_check_changes_nothing(dry_run):
    """The dry run's install step is ``install.sh --check``: it names the torch in use, would
    only build unimri, and never asks for another numpy (or anything installed)."""
    out, _ = dry_run
    log = (out / "logs" / "install.log").read_text()
    assert f"using the installed torch {torch.__version__}" in log
    assert "would run: pip install -q --no-build-isolation --no-deps -e ." in log
    assert "numpy<2.4" not in log
