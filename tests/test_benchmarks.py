"""`vggnet bench`, and the benchmark scripts' harness and orchestration: the machinery, never the speed.

The scripts' own smoke runs (`python benchmarks/bench_*.py --smoke`) are CI's last step (.ci/run);
here they only start and skip everything (`--budget-s 0`), and gpu_suite.py runs cheap stand-in steps.
"""

import importlib
import itertools
import json
import os
import subprocess
import sys
import types
from pathlib import Path

import pytest
import torch

from vggnet.cli import main
from vggnet.deploy.bench import SCHEMA, matmul_peak, run_bench, time_interleaved
from vggnet.deploy.inference import cpu_has_native_bf16, optimize_for_inference
from vggnet.deploy.winograd import MAX_RELATIVE_ERROR

ROOT = Path(__file__).resolve().parent.parent
BENCHMARKS = ROOT / "benchmarks"
# The scripts import their harness as a sibling module, as `python benchmarks/bench_x.py` lets them.
sys.path.insert(0, str(BENCHMARKS))

import bench_compile  # noqa: E402
import bench_train  # noqa: E402
import bench_winograd  # noqa: E402
import gpu_suite  # noqa: E402
from harness import Budget, environment, save_results  # noqa: E402

TINY = ["bench", "--arch", "vgg11", "--image-size", "32", "--iters", "1", "--rounds", "1"]
RESULT_KEYS = {
    "name", "img_per_s", "latency_ms", "latency_ms_min", "tflops", "peak_fraction", "first_call_s", "max_abs_diff",
}  # fmt: skip


def bench_json(capsys, *extra: str) -> dict:
    assert main([*TINY, "--json", *extra]) == 0
    return json.loads(capsys.readouterr().out)


@pytest.mark.slow
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


@pytest.mark.slow
def test_bench_counts_the_flops_of_the_input_size(capsys):
    report = bench_json(capsys, "--no-torchvision")
    # vgg11 at 32x32: the convolutions' multiply-adds at 32 px plus the three fully connected layers
    convs = [(3, 64, 32), (64, 128, 16), (128, 256, 8), (256, 256, 8), (256, 512, 4), (512, 512, 4)]
    convs += [(512, 512, 2), (512, 512, 2)]
    macs = sum(cin * cout * 9 * side * side for cin, cout, side in convs) + 25088 * 4096 + 4096 * 4096 + 4096 * 1000
    assert report["gflop_per_image"] == pytest.approx(2 * macs / 1e9)
    assert [r["name"] for r in report["results"]] == ["vggnet eager", "vggnet optimized"]
    assert report["speedup_vs_torchvision_eager"] == {}


@pytest.mark.slow
def test_bench_prints_a_table(capsys):
    assert main([*TINY, "--no-torchvision", "--batch-size", "2", "--dtype", "bfloat16"]) == 0
    out = capsys.readouterr().out
    assert "vgg11, batch 2, 32x32, bfloat16, compile=off on cpu" in out
    assert "matmul peak" in out and "vggnet optimized" in out and "img/s" in out


def test_bench_refuses_bad_arguments(capsys):
    assert main(["bench", "--iters", "0"]) == 2
    assert main(["bench", "--arch", "vgg17"]) == 2
    assert "valid: vgg11" in capsys.readouterr().err
    assert main(["bench", "--dtype", "int4"]) == 2
    assert main(["bench", "--dtype", "int8", "--device", "cuda"]) == 2
    assert "int8 runs on CPU only" in capsys.readouterr().err


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the message shown without CUDA")
def test_bench_on_cuda_without_it_fails_with_a_message(capsys):
    assert main([*TINY, "--device", "cuda"]) == 2  # a device this machine does not have: a usage error
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


def test_environment_records_where_and_when():
    env = environment(torch.device("cpu"))
    assert set(env) == {"device", "device_name", "versions", "date", "load_average", "threads", "environment"}
    assert env["device"] == "cpu" and "CPUs" in env["device_name"] and env["threads"] == torch.get_num_threads()
    assert {"vggnet", "torch", "python"} <= set(env["versions"]) and env["date"].endswith("+00:00")
    json.dumps(env, allow_nan=False)  # what save_results writes


# suite -> what a run past its budget lists under `skipped`, in the order the script would run them
BUDGETED = {
    "inference": [{"arch": "vgg11", "batch_size": 1}, {"arch": "vgg11", "batch_size": 2}],
    "train": [{"name": "vggnet eager"}, {"name": "torchvision eager"}]
    + ([{"name": "vggnet bf16"}] if cpu_has_native_bf16() else []),  # bf16 is timed where the CPU computes it
    "finetune": [{"part": f"memory, checkpointing {on}"} for on in ("off", "on")] + [{"part": "linear_vs_full"}],
    "pipeline": [{"round": 1}],
    "compile": [{"library": lib, "precision": "fp32", "repeat": 1} for lib in ("vggnet", "torchvision")],
}


def test_compile_runs_alternate_which_library_compiles_first():
    """Each run is a fresh process with its own cache; the order still alternates, so load drifts hit both."""
    runs = bench_compile._plan(["fp32", "bf16"], repeats=2)
    assert [(r["library"], r["precision"], r["repeat"]) for r in runs] == [
        ("vggnet", "fp32", 1), ("torchvision", "fp32", 1), ("vggnet", "bf16", 1), ("torchvision", "bf16", 1),
        ("torchvision", "fp32", 2), ("vggnet", "fp32", 2), ("torchvision", "bf16", 2), ("vggnet", "bf16", 2),
    ]  # fmt: skip
    with pytest.raises(SystemExit, match="unknown precisions"):
        bench_compile._plan(["fp16"], repeats=1)


@pytest.mark.parametrize(
    ("argv", "backend"),
    [([], "inductor"), (["--smoke"], "aot_eager"), (["--smoke", "--backend", "inductor"], "inductor")],
)
def test_compile_times_inductor_and_its_smoke_compiles_without_code_generation(argv, backend):
    """The smoke checks the machinery (graphs, the recompile on unfreezing) with aot_eager; timings are Inductor's."""
    args = bench_compile._parser().parse_args(argv)
    bench_compile._defaults(args)
    assert args.backend == backend


@pytest.mark.parametrize("suite", list(BUDGETED))
@pytest.mark.slow
def test_benchmark_past_its_budget_starts_nothing_and_says_so(suite, tmp_path):
    pytest.importorskip("torchvision")
    script = importlib.import_module(f"bench_{suite}")
    assert script.main(["--smoke", "--device", "cpu", "--out", str(tmp_path), "--budget-s", "0"]) == 0
    (path,) = tmp_path.glob("*.json")
    assert path.name.startswith(f"{suite}-smoke-cpu-20")
    data = json.loads(path.read_text())
    assert data["suite"] == suite and data["smoke"] is True and data["device"] == "cpu"
    assert {"torch", "torchvision", "vggnet"} <= set(data["versions"]) and data["date"]
    assert data["skipped"] == [{**part, "reason": "over --budget-s"} for part in BUDGETED[suite]]
    assert data.get("runs", data.get("results", data.get("activation_memory"))) == []
    if suite != "inference":  # the two that record how far a run got
        assert data["complete"] is True and data["pending"] == [] and data["budget_s"] == 0


@pytest.mark.slow
def test_a_benchmark_runs_as_a_script_from_any_folder(tmp_path):
    pytest.importorskip("torchvision")
    # Without PYTHONPATH, from another folder: the script finds its harness, and this checkout's vggnet
    # ahead of any installed one.
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    cmd = [sys.executable, str(BENCHMARKS / "bench_inference.py"), "--smoke", "--out", "out", "--budget-s", "0"]
    run = subprocess.run(cmd, capture_output=True, text=True, timeout=600, cwd=tmp_path, env=env)
    assert run.returncode == 0, run.stderr[-2000:]
    (path,) = (tmp_path / "out").glob("inference-smoke-*.json")
    assert json.loads(path.read_text())["suite"] == "inference"


def test_train_rows_compare_with_torchvision_eager_once_it_has_run():
    times = {"vggnet eager": [0.5, 0.25, 0.3], "torchvision eager": [0.5, 0.5, 0.6]}
    first, losses = {"vggnet eager": 2.0, "torchvision eager": 3.0}, {"vggnet eager": 6.9, "torchvision eager": 7.0}
    rows = bench_train._rows(times, 4, first, losses)
    assert [r["name"] for r in rows] == ["vggnet eager", "torchvision eager"]
    vgg, tv = rows
    assert vgg["img_per_s"] == pytest.approx(4 / 0.3) and vgg["step_ms"] == pytest.approx(300)
    assert vgg["step_ms_min"] == pytest.approx(250) and vgg["first_step_s"] == 2.0 and vgg["first_loss"] == 6.9
    assert vgg["speedup_vs_torchvision_eager"] == pytest.approx(0.5 / 0.3) and tv["speedup_vs_torchvision_eager"] == 1
    # Before torchvision eager has run (it is added second) there is nothing to compare with.
    (alone,) = bench_train._rows({"vggnet eager": [0.3]}, 4, first, losses)
    assert "speedup_vs_torchvision_eager" not in alone


@pytest.mark.slow
def test_every_candidate_runs_in_the_asked_dtype(monkeypatch):
    import vggnet.deploy.bench

    asked = []

    def spy(model, **kwargs):
        asked.append(kwargs)
        return optimize_for_inference(model, **kwargs)

    monkeypatch.setattr(vggnet.deploy.bench, "optimize_for_inference", spy)
    report = run_bench("vgg11", dtype=torch.bfloat16, iters=1, rounds=1, image_size=32, with_torchvision=False)
    assert [kwargs["dtype"] for kwargs in asked] == [torch.bfloat16]
    assert report.dtype == "bfloat16" and report.matmul_peak_how.endswith("bfloat16")


def test_bench_on_cpu_defaults_to_float32_even_where_bf16_is_native(monkeypatch):
    from vggnet.deploy import bench as bench
    from vggnet.deploy import inference

    monkeypatch.setattr(inference, "cpu_has_native_bf16", lambda: True)
    assert inference.default_dtype(torch.device("cpu")) == torch.bfloat16
    assert bench._settings("cpu", None, None)[1] == torch.float32  # as `vggnet bench --help` says


def test_cpu_peak_skips_the_gemms_in_a_dtype_onednn_cannot_compute(monkeypatch):
    # Without native bf16 (oneDNN limited to AVX2) torch's reference GEMMs take far too long
    # (benchmarks/README.md).
    from vggnet.deploy import bench as bench

    cpu = torch.device("cpu")
    assert set(bench.peak_kernels(cpu, torch.float32, size=64)) == {"matmul", "1x1", "3x3"}
    monkeypatch.setattr(bench, "onednn_computes", lambda dtype: dtype == torch.float32)
    assert set(bench.peak_kernels(cpu, torch.bfloat16, size=64)) == {"3x3"}
    assert set(bench.peak_kernels(cpu, torch.float32, size=64)) == {"matmul", "1x1", "3x3"}


# gpu_suite.py: its steps are real processes; stand-ins replace the benchmarks, whose smoke runs in CI.


def stand_in(fail: str | None = None):
    """A `gpu_suite.command` whose steps print their name and limit (and `fail` exits 3), in 0.1 s each."""

    def command(name, out, device, smoke, limit):
        code = f"import time; time.sleep(0.1); print('step {name} limit {limit:.0f}')"
        code += f"; raise SystemExit({3 if name == fail else 0})"
        return [sys.executable, "-c", code]

    return command


@pytest.mark.slow
def test_gpu_suite_runs_every_step_in_order_and_writes_a_summary(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(gpu_suite, "command", stand_in())
    assert gpu_suite.main(["--smoke", "--out", str(tmp_path), "--budget-s", "400"]) == 0
    (path,) = tmp_path.glob("*.json")
    assert path.name.startswith(f"gpu_suite-smoke-{'cuda' if torch.cuda.is_available() else 'cpu'}-20")
    summary = json.loads(path.read_text())
    assert summary["suite"] == "gpu_suite" and summary["smoke"] is True and summary["budget_s"] == 400
    assert {"vggnet", "torch"} <= set(summary["versions"]) and summary["elapsed_s"] > 0
    steps = summary["steps"]
    assert list(steps) == ["tests", "inference", "train", "finetune"]
    assert all(step["returncode"] == 0 and step["elapsed_s"] > 0 for step in steps.values())
    # The first step gets its share (25% of 400 s); each later one also what the steps before left unused.
    assert "step tests limit 100" in steps["tests"]["output_tail"]
    for name, step in steps.items():
        limit = float(step["output_tail"].split(f"step {name} limit ")[1].split()[0])
        assert gpu_suite.SHARES[name] * 400 <= limit <= 400, name
    assert "failed" not in capsys.readouterr().out


@pytest.mark.slow
def test_gpu_suite_goes_on_after_a_failed_step_and_names_it(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(gpu_suite, "command", stand_in(fail="train"))
    assert gpu_suite.main(["--smoke", "--out", str(tmp_path), "--budget-s", "400"]) == 1
    assert "failed or skipped: train" in capsys.readouterr().out
    (path,) = tmp_path.glob("*.json")
    steps = json.loads(path.read_text())["steps"]
    assert {name: step["returncode"] for name, step in steps.items()} == {
        "tests": 0, "inference": 0, "train": 3, "finetune": 0,
    }  # fmt: skip


def test_gpu_suite_with_its_budget_spent_starts_no_step(tmp_path, capsys):
    # Under 20 s left, no step starts: each is listed with the command it would have run.
    assert gpu_suite.main(["--smoke", "--out", str(tmp_path), "--budget-s", "10"]) == 1
    assert "failed or skipped: tests, inference, train, finetune" in capsys.readouterr().out
    (path,) = tmp_path.glob("*.json")
    steps = json.loads(path.read_text())["steps"]
    assert all(step["returncode"] is None and step["skipped"] == "budget spent" for step in steps.values())
    assert steps["inference"]["command"][1] == str(BENCHMARKS / "bench_inference.py")


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the refusal without CUDA")
def test_gpu_suite_without_cuda_asks_for_smoke(tmp_path, capsys):
    assert gpu_suite.main(["--out", str(tmp_path)]) == 2
    assert "run with --smoke" in capsys.readouterr().err
    assert list(tmp_path.iterdir()) == []


@pytest.mark.slow
def test_gpu_suite_kills_a_step_at_its_limit_and_keeps_what_it_printed():
    cmd = [sys.executable, "-c", "print('started', flush=True); import time; time.sleep(60)"]
    step = gpu_suite.run_step("sleeper", cmd, limit=2)
    assert step["returncode"] is None and step["command"] == cmd
    assert "started" in step["output_tail"] and step["output_tail"].endswith("[killed after 2 s]")
    assert 2 <= step["elapsed_s"] < 30


@pytest.mark.parametrize("name", ["inference", "train", "finetune"])
def test_gpu_suite_runs_each_benchmark_with_options_it_takes(name, tmp_path, capsys):
    cmd = gpu_suite.command(name, tmp_path, "cpu", True, limit=100)
    assert cmd[:2] == [sys.executable, str(BENCHMARKS / f"bench_{name}.py")]
    assert cmd[2:] == ["--device", "cpu", "--out", str(tmp_path), "--smoke", "--budget-s", "60"]
    module = importlib.import_module(f"bench_{name}")
    with pytest.raises(SystemExit) as exit_:
        module.main(["--help"])
    assert exit_.value.code == 0
    usage = capsys.readouterr().out
    assert all(option in usage for option in cmd if option.startswith("--"))


# --- int8 (issue 16) ------------------------------------------------------------------------------


@pytest.mark.slow
def test_bench_int8_json_schema_carries_the_agreement_figures(capsys):
    from dataclasses import fields

    from vggnet.deploy.quantize import QuantizeReport, int8_instructions

    pytest.importorskip("torchao")
    report = bench_json(capsys, "--dtype", "int8", "--no-torchvision")
    assert report["schema"] == SCHEMA and report["dtype"] == "int8" and report["device"] == "cpu"
    assert "float32" in report["matmul_peak_how"]  # the float candidates and the peak run in float32
    names = [r["name"] for r in report["results"]]
    assert names == ["vggnet eager", "vggnet optimized", "vggnet int8"]
    for r in report["results"]:
        assert set(r) == RESULT_KEYS and r["img_per_s"] > 0
    _, fp32_optimized, int8 = report["results"]
    assert fp32_optimized["max_abs_diff"] < 1e-4  # float32: the same logits
    q = report["int8"]
    assert set(q) == {f.name for f in fields(QuantizeReport)}
    assert q["int8"] == (int8_instructions() is not None) and q["instructions"] == int8_instructions()
    assert q["calibration_images"] == 8 and q["evaluated_images"] == 8 and q["evaluated_on"] == "held_out"
    assert q["image_size"] == [32, 32] and q["batch_size"] == 1
    assert 0 <= q["top1_agreement"] <= 100 and q["min_cosine"] <= q["cosine"] <= 1 + 1e-6
    assert q["accuracy_fp32"] is None  # random images have no labels
    if q["int8"]:
        assert q["cosine"] > 0.99 and int8["max_abs_diff"] > 0 and q["compile_s"] > 0


# --- where the time goes (issue 27) ----------------------------------------------------------------


def test_cpu_layers_reads_onednn_own_figures_from_a_real_call(tmp_path):
    import bench_cpu_layers

    x = torch.randn(1, 8, 6, 6).contiguous(memory_format=torch.channels_last)
    w = torch.randn(8, 8, 3, 3)
    one = [1, 1]
    with torch.inference_mode():
        run = lambda: torch.ops.mkldnn._convolution_pointwise(x, w, None, one, one, one, 1, "relu", [], "")  # noqa: E731
        run()
        done = bench_cpu_layers.verbose_call(run, tmp_path)
    convs = [p for p in done if p["kind"] == "convolution"]
    assert len(convs) == 1 and convs[0]["ms"] > 0 and "ic8oc8" in convs[0]["problem"]
    print("standard output is back")  # fd 1 restored: pytest still captures it, nothing went to the log
    assert "standard output is back" not in (tmp_path / "verbose.log").read_text()


def test_cpu_layers_parses_primitive_exec_lines_only_with_or_without_a_timestamp():
    import bench_cpu_layers

    text = "\n".join(
        [
            "onednn_verbose,v1,info,oneDNN v3.7.1",
            "onednn_verbose,v1,primitive,create:cache_miss,cpu,convolution,brg,forward,src,attr,alg,mb1_ic8,0.5",
            "onednn_verbose,v1,primitive,exec,cpu,convolution,brg_conv_fwd:avx512,forward,src,attr,alg,mb1_ic8,0.25",
            "onednn_verbose,1733500000.1,v1,primitive,exec,cpu,reorder,jit:uni,undef,src,attr,,64x64,0.125",
            # a oneDNN Graph partition's own line, around the primitive's above: counted once, not twice
            "onednn_verbose,v1,graph,exec,cpu,100059,convolution_post_ops,aten::_convolution,data,in0,fpm,conv,dnnl_backend,0.3",
            "something else entirely",
        ]
    )
    assert bench_cpu_layers.parse_verbose(text) == [
        {"kind": "convolution", "impl": "brg_conv_fwd:avx512", "problem": "mb1_ic8", "ms": 0.25},
        {"kind": "reorder", "impl": "jit:uni", "problem": "64x64", "ms": 0.125},
    ]


def test_cpu_layers_takes_the_median_of_calls_that_ran_the_usual_primitives():
    import bench_cpu_layers

    def call(*ms: float) -> list[dict]:
        return [{"kind": "convolution", "impl": "i", "problem": f"p{i}", "ms": t} for i, t in enumerate(ms)]

    odd = call(9.0, 9.0, 9.0)  # a call with an extra reorder, say: left out, not lined up wrongly
    rows = bench_cpu_layers.per_primitive([call(1.0, 4.0), odd, call(3.0, 2.0), call(2.0, 3.0)])
    assert [(r["problem"], r["ms"]) for r in rows] == [("p0", 2.0), ("p1", 3.0)]


def test_cpu_layers_profile_puts_the_per_call_cost_outside_onednn():
    import bench_cpu_layers

    runs = bench_cpu_layers.tiny_calls()
    assert "float32" in runs
    r = bench_cpu_layers.profile(runs["float32"], calls=5)
    assert r["primitives_per_call"] == 1 and set(r["onednn_ms_by_kind"]) == {"convolution"}
    assert 0 < r["onednn_ms"] < r["wall_ms"] and r["outside_onednn_ms"] == pytest.approx(r["wall_ms"] - r["onednn_ms"])


def test_cpu_layers_times_the_small_convolution_as_a_onednn_graph_program_once_per_primitive():
    import bench_cpu_layers

    from vggnet.deploy import onednn_graph

    if not onednn_graph.onednn_graph_available():
        pytest.skip("needs TorchScript's oneDNN fuser")
    runs = bench_cpu_layers.tiny_calls()
    r = bench_cpu_layers.profile(runs["float32 oneDNN Graph"], calls=3)
    # its partition's own `graph,exec` line is left out: one convolution, counted once
    assert r["primitives_per_call"] == 1 and set(r["onednn_ms_by_kind"]) == {"convolution"}


def test_every_candidate_is_called_twice_before_the_timed_rounds_even_with_one_warmup_call(monkeypatch):
    # an optimized model makes its oneDNN Graph program on a shape's second call: never a timed one
    from vggnet.deploy import bench

    calls: dict[str, int] = {}
    before_timing: dict[str, int] = {}

    def candidate(name: str):
        def run(x: torch.Tensor) -> torch.Tensor:
            calls[name] = calls.get(name, 0) + 1
            return x.sum(dim=(1, 2, 3)).unsqueeze(1)

        return run

    def interleaved(fns, **kwargs):
        before_timing.update(calls)
        return {name: [0.0] for name in fns}

    monkeypatch.setattr(bench, "time_interleaved", interleaved)
    models = {bench.EAGER: candidate(bench.EAGER), "vggnet optimized": candidate("vggnet optimized")}
    bench._measure(models, {}, torch.zeros(1, 3, 8, 8), device=torch.device("cpu"), warmup=1, iters=1, rounds=1)
    assert before_timing == {"vggnet optimized": 2, bench.EAGER: 3}  # eager also gives the expected logits


def test_int8_layers_pairs_the_layers_by_kind_and_order_and_keeps_the_rest_apart():
    import bench_int8_layers

    ours = {
        "quantize_uint8": 0.1,
        "qconv_pointwise_default": 1.0,
        "max_pool2d_default": 0.2,
        "qconv_pointwise_default_1": 2.0,
        "flatten": 0.05,
        "qlinear_pointwise_default": 3.0,
    }
    theirs = {"Subgraph x/fq": 0.07, "Reorder abcd_acdb___module.features.0/aten::_convolution/Convolution": 0.04,
              "Convolution __module.features.0": 1.1, "Convolution __module.features.2": 1.9,
              "MaxPool __module.features.4": 0.3, "FullyConnected __module.classifier.0": 2.5}  # fmt: skip
    rows = {r["layer"]: (r["vggnet_ms"], r["openvino_ms"]) for r in bench_int8_layers._table(ours, theirs)}
    assert rows["conv 1"] == (1.0, 1.1) and rows["conv 2"] == (2.0, 1.9)
    assert rows["pool 1"] == (0.2, 0.3) and rows["fc 1"] == (3.0, 2.5)
    # a reorder named after the convolution it feeds is not that convolution
    assert rows["other: Reorder abcd_acdb___module.features.0/aten::_convolution/Convolution"] == (None, 0.04)
    assert rows["other: quantize_uint8"] == (0.1, None) and rows["other: flatten"] == (0.05, None)
    assert list(rows)[:4] == ["conv 1", "conv 2", "pool 1", "fc 1"]


def test_cpu_peers_times_each_candidate_warm_after_idle_cores_in_changing_orders(monkeypatch):
    """A turn: the cores idle (other runtimes' threads spin a while after their calls), one untimed call, the
    timed calls. In one fixed order a candidate's turn would always follow the same one: each round
    shuffles the order, the same for the same seed."""
    import bench_cpu_peers

    names = ["torchvision fp32", "vggnet int8", "openvino int8 (nncf)", "onnxruntime fp32"]
    steps: list[str] = []
    clock = [0.0]  # advanced one second by each call of a candidate: a timed call takes 1 s

    def candidate(name):
        def run(x):
            steps.append(name)
            clock[0] += 1.0

        return run

    fake_time = types.SimpleNamespace(sleep=lambda s: steps.append(f"idle {s}"), perf_counter=lambda: clock[0])
    monkeypatch.setattr(bench_cpu_peers, "time", fake_time)  # this module's clock only
    runs = {name: candidate(name) for name in names}
    times = bench_cpu_peers.time_rounds(runs, torch.zeros(1), rounds=12, calls=2, seed="7")
    assert times == {name: [1.0] * 12 for name in names}  # the untimed call is not counted
    assert bench_cpu_peers.SETTLE_S > 0 and steps[: len(names)] == names  # one warm-up call each, in order
    turns = [steps[i : i + 4] for i in range(len(names), len(steps), 4)]
    assert len(turns) == 12 * len(names)
    assert all(turn == [f"idle {bench_cpu_peers.SETTLE_S}", *[turn[1]] * 3] for turn in turns)
    orders = [tuple(turn[1] for turn in turns[i : i + len(names)]) for i in range(0, len(turns), len(names))]
    assert all(sorted(order) == sorted(names) for order in orders) and len(set(orders)) > 6
    after = [pair for order in orders for pair in itertools.pairwise(order)]
    assert len(set(after)) >= 10  # of the 12 pairs of 4 candidates
    assert all(len({a for a, b in after if b == name}) >= 2 for name in names)  # after 2 others at least
    first = list(steps)
    steps.clear()
    bench_cpu_peers.time_rounds(runs, torch.zeros(1), rounds=12, calls=2, seed="7")
    assert steps == first  # the same seed, the same orders
    steps.clear()
    bench_cpu_peers.time_rounds(runs, torch.zeros(1), rounds=12, calls=2, seed="8")
    assert steps != first


def test_winograd_rows_time_both_ways_and_say_what_the_model_takes(capsys):
    taken = bench_winograd.layer_row(128, 256, 16, 2, iters=1, rounds=1)  # 32 tiles
    assert taken["rule_takes_winograd"] is True and set(taken["ms"]) == {"direct", "winograd"}
    assert 0 < taken["relative_error"]["winograd"] <= MAX_RELATIVE_ERROR
    assert taken["direct_over_winograd"] == taken["ms"]["direct"] / taken["ms"]["winograd"]
    skipped = bench_winograd.layer_row(64, 64, 16, 2, iters=1, rounds=1)  # too few channels
    assert skipped["rule_takes_winograd"] is False and 0 < skipped["relative_error"]["winograd"] <= MAX_RELATIVE_ERROR
    assert "<- the rule takes it" in capsys.readouterr().out
