"""`vggnet bench` and the benchmark scripts: the report's schema and the machinery, never the speed."""

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from vggnet.bench import SCHEMA, Budget, matmul_peak, run_bench, save_results, time_interleaved
from vggnet.cli import main
from vggnet.inference import optimize_for_inference

ROOT = Path(__file__).resolve().parent.parent
TINY = ["bench", "--arch", "vgg11", "--image-size", "32", "--iters", "1", "--rounds", "1"]
RESULT_KEYS = {
    "name", "img_per_s", "latency_ms", "latency_ms_min", "tflops", "peak_fraction", "first_call_s", "max_abs_diff",
}  # fmt: skip


def bench_json(capsys, *extra: str) -> dict:
    assert main([*TINY, "--json", *extra]) == 0
    return json.loads(capsys.readouterr().out)


def test_bench_json_schema(capsys):
    pytest.importorskip("torchvision")
    report = bench_json(capsys)
    assert report["schema"] == SCHEMA
    assert report["arch"] == "vgg11" and report["batch_size"] == 1 and report["image_size"] == [32, 32]
    assert report["device"] == "cpu" and report["dtype"] == "float32" and report["compile"] is False
    assert report["iters"] == 1 and report["rounds"] == 1 and report["threads"] >= 1
    assert {"vggnet", "torch", "torchvision", "python"} <= set(report["versions"])
    assert report["date"].endswith("+00:00")
    assert isinstance(report["environment"], dict)
    assert report["matmul_peak_tflops"] > 0 and "float32" in report["matmul_peak_how"]
    names = [r["name"] for r in report["results"]]
    assert names == ["vggnet eager", "vggnet optimized", "torchvision eager", "torchvision channels_last"]
    for r in report["results"]:
        assert set(r) == RESULT_KEYS
        assert r["img_per_s"] > 0 and r["latency_ms"] >= r["latency_ms_min"] > 0
        assert r["img_per_s"] == pytest.approx(1e3 / r["latency_ms"])
        assert r["peak_fraction"] == pytest.approx(r["tflops"] / report["matmul_peak_tflops"])
        assert r["max_abs_diff"] < 1e-4  # same weights, same input: the same logits
    speedups = report["speedup_vs_torchvision_eager"]
    assert speedups["torchvision eager"] == 1.0 and set(speedups) == set(names)


def test_bench_counts_the_flops_of_the_input_size(capsys):
    report = bench_json(capsys, "--no-torchvision")
    # vgg11 at 32x32: the convolutions' multiply-adds at 32 px plus the three fully connected layers
    convs = [(3, 64, 32), (64, 128, 16), (128, 256, 8), (256, 256, 8), (256, 512, 4), (512, 512, 4)]
    convs += [(512, 512, 2), (512, 512, 2)]
    macs = sum(cin * cout * 9 * side * side for cin, cout, side in convs) + 25088 * 4096 + 4096 * 4096 + 4096 * 1000
    assert report["gflop_per_image"] == pytest.approx(2 * macs / 1e9)
    assert [r["name"] for r in report["results"]] == ["vggnet eager", "vggnet optimized"]
    assert report["speedup_vs_torchvision_eager"] == {}


def test_bench_prints_a_table(capsys):
    assert main([*TINY, "--no-torchvision", "--batch-size", "2", "--dtype", "bfloat16"]) == 0
    out = capsys.readouterr().out
    assert "vgg11, batch 2, 32x32, bfloat16, compile=off on cpu" in out
    assert "matmul peak" in out and "vggnet optimized" in out and "img/s" in out


def test_bench_refuses_bad_arguments(capsys):
    assert main(["bench", "--iters", "0"]) == 2
    assert main(["bench", "--arch", "vgg17"]) == 2
    assert "valid: vgg11" in capsys.readouterr().err
    assert main(["bench", "--dtype", "int8"]) == 2


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the message shown without CUDA")
def test_bench_on_cuda_without_it_fails_with_a_message(capsys):
    assert main([*TINY, "--device", "cuda"]) == 1
    assert "CUDA is not available" in capsys.readouterr().err


def test_time_interleaved_takes_turns_and_splits_the_calls_into_rounds():
    calls: list[str] = []
    times = time_interleaved(
        {"a": lambda: calls.append("a"), "b": lambda: calls.append("b")}, device=torch.device("cpu"), iters=6, rounds=3
    )
    assert calls == ["a", "a", "b", "b"] * 3
    assert {name: len(t) for name, t in times.items()} == {"a": 3, "b": 3}
    assert all(x >= 0 for t in times.values() for x in t)


def test_matmul_peak_on_cpu():
    tflops, how = matmul_peak(torch.device("cpu"), size=128)
    assert tflops > 0 and how.endswith(", float32")
    kinds = ("matmul 128x128", "1x1 convolution (oneDNN) 128x128", "3x3 convolution (oneDNN), 128 channels")
    assert how.startswith(kinds)


def test_save_results_names_the_file_after_suite_device_and_date(tmp_path):
    path = save_results("inference", {"device": "cuda:0", "runs": []}, tmp_path / "new")
    assert path.parent == tmp_path / "new" and path.name.startswith("inference-cuda-20") and path.suffix == ".json"
    assert json.loads(path.read_text()) == {"device": "cuda:0", "runs": []}
    assert [p.name for p in path.parent.iterdir()] == [path.name]  # no temporary file left behind


def test_budget_skips_only_once_spent_and_records_what_it_skipped():
    unlimited = Budget(None)
    assert unlimited.left() == float("inf") and not unlimited.skip(name="a") and unlimited.skipped == []
    roomy = Budget(3600)
    assert 3590 < roomy.left() <= 3600 and 0 <= roomy.spent() < 10
    assert not roomy.skip(name="a") and roomy.skipped == []
    spent = Budget(0)
    assert spent.skip(arch="vgg11", batch_size=2) and spent.skip(part="b") and spent.left() < 0
    assert spent.skipped == [
        {"arch": "vgg11", "batch_size": 2, "reason": "over --budget-s"},
        {"part": "b", "reason": "over --budget-s"},
    ]


@pytest.mark.parametrize("script", ["bench_inference.py", "bench_train.py"])
def test_benchmark_smoke_mode_writes_valid_json(script, tmp_path):
    pytest.importorskip("torchvision")
    run = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / script), "--smoke", "--device", "cpu", "--out", str(tmp_path)],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert run.returncode == 0, run.stderr[-2000:]
    (path,) = tmp_path.glob("*.json")
    data = json.loads(path.read_text())
    suite = script.removeprefix("bench_").removesuffix(".py")
    assert path.name.startswith(f"{suite}-smoke-cpu-")
    assert data["suite"] == suite and data["smoke"] is True and data["device"] == "cpu"
    assert {"torch", "torchvision", "vggnet"} <= set(data["versions"]) and data["date"]
    if suite == "inference":
        assert [(r["arch"], r["batch_size"]) for r in data["runs"]] == [("vgg11", 1), ("vgg11", 2)]
        assert all(r["schema"] == SCHEMA for r in data["runs"])
    else:
        assert {r["name"] for r in data["results"]} == {"vggnet eager", "torchvision eager"}
        assert all(r["img_per_s"] > 0 for r in data["results"])


@pytest.mark.parametrize(
    ("script", "parts"),
    [
        ("bench_train.py", ["vggnet eager", "torchvision eager"]),
        ("bench_finetune.py", ["memory, checkpointing off", "memory, checkpointing on", "linear_vs_full"]),
    ],
)
def test_benchmark_past_its_budget_starts_nothing_and_says_so(script, parts, tmp_path):
    pytest.importorskip("torchvision")
    cmd = [sys.executable, str(ROOT / "benchmarks" / script), "--smoke", "--device", "cpu", "--out", str(tmp_path)]
    run = subprocess.run([*cmd, "--budget-s", "0"], capture_output=True, text=True, timeout=600)
    assert run.returncode == 0, run.stderr[-2000:]
    (path,) = tmp_path.glob("*.json")
    data = json.loads(path.read_text())
    assert data["complete"] is True and data["pending"] == [] and data["budget_s"] == 0
    assert [s.get("name", s.get("part")) for s in data["skipped"]] == parts
    assert all(s["reason"] == "over --budget-s" for s in data["skipped"])
    assert data.get("results", data.get("activation_memory")) == []


def test_every_candidate_runs_in_the_asked_dtype(monkeypatch):
    import vggnet.bench

    asked = []

    def spy(model, **kwargs):
        asked.append(kwargs)
        return optimize_for_inference(model, **kwargs)

    monkeypatch.setattr(vggnet.bench, "optimize_for_inference", spy)
    report = run_bench("vgg11", dtype=torch.bfloat16, iters=1, rounds=1, image_size=32, with_torchvision=False)
    assert [kwargs["dtype"] for kwargs in asked] == [torch.bfloat16]
    assert report.dtype == "bfloat16" and report.matmul_peak_how.endswith("bfloat16")


@pytest.mark.slow
def test_gpu_suite_smoke_runs_every_step_and_writes_a_summary(tmp_path):
    pytest.importorskip("torchvision")
    run = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / "gpu_suite.py"), "--smoke", "--out", str(tmp_path)],
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-2000:]
    names = sorted(p.name.split("-")[0] for p in tmp_path.glob("*.json"))
    assert names == ["finetune", "gpu_suite", "inference", "train"]
    (summary,) = tmp_path.glob("gpu_suite-*.json")
    steps = json.loads(summary.read_text())["steps"]
    assert list(steps) == ["tests", "inference", "train", "finetune"]
    assert all(step["returncode"] == 0 and step["elapsed_s"] > 0 for step in steps.values())


def test_cpu_peak_skips_the_gemms_in_a_dtype_onednn_cannot_compute(monkeypatch):
    # Without native bf16 (oneDNN limited to AVX2) torch's reference GEMM takes about a minute at 2048.
    from vggnet import bench

    cpu = torch.device("cpu")
    assert set(bench.peak_kernels(cpu, torch.float32, size=64)) == {"matmul", "1x1", "3x3"}
    monkeypatch.setattr(bench, "onednn_computes", lambda dtype: dtype == torch.float32)
    assert set(bench.peak_kernels(cpu, torch.bfloat16, size=64)) == {"3x3"}
    assert set(bench.peak_kernels(cpu, torch.float32, size=64)) == {"matmul", "1x1", "3x3"}


def test_bench_pipeline_smoke_writes_its_figures(tmp_path):
    pytest.importorskip("PIL")
    cmd = [sys.executable, str(ROOT / "benchmarks" / "bench_pipeline.py"), "--smoke", "--device", "cpu"]
    run = subprocess.run([*cmd, "--out", str(tmp_path), "--workers", "1"], capture_output=True, text=True, timeout=600)
    assert run.returncode == 0, run.stderr[-2000:]
    (path,) = tmp_path.glob("*.json")
    data = json.loads(path.read_text())
    assert path.name.startswith("pipeline-smoke-cpu-") and data["suite"] == "pipeline" and data["complete"]
    assert (data["arch"], data["batch_size"], data["images"], data["workers"]) == ("vgg11", 4, 16, 1)
    assert set(data["img_per_s"]) == {"bare model", "predict", "evaluate"}
    assert all(v > 0 for v in data["img_per_s"].values())
    for name in ("predict", "evaluate"):
        assert data["share_of_bare"][name] == pytest.approx(
            data["img_per_s"][name] / data["img_per_s"]["bare model"], abs=1e-3
        )
