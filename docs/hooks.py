"""MkDocs hook: the parts of the site that are generated, so that they cannot drift from the code.

A page holds a marker (an HTML comment on a line of its own) and the hook replaces it when the page is built:

- `<!-- vggnet:models-table -->`: the models and their records (`vggnet.get_model_weights`);
- `<!-- vggnet:cli-reference -->`: every command's usage and options, read off `vggnet.cli.build_parser()`;
- `<!-- vggnet:speed-tables -->`: the figures in `benchmarks/results/*.json`, each table with its machine and date;
- `<!-- vggnet:changelog -->`: CHANGELOG.md at the repository's root, when there is one;
- `<!-- vggnet:layout -->`: each package's docstring (its modules, bottom up), `<!-- vggnet:layers -->` the
  layers tests/test_layout.py enforces, `<!-- vggnet:cli-howto -->` the docstring of `vggnet.cli`.

Nothing here is a plugin: `hooks: [docs/hooks.py]` in mkdocs.yml loads it. The functions are plain and
importable, so tests/test_docs.py checks them without building the site.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:  # the checkout's vggnet, installed or not
    sys.path.insert(0, str(ROOT))


# --- the models table ------------------------------------------------------------------------------


def models_table() -> str:
    """The models and their records as a Markdown table (the README's, checked by tests/test_readme.py)."""
    import vggnet

    rows = [
        "| model | weights | params | GFLOPS | acc@1 | acc@5 | file MiB |",
        "|---|---|---:|---:|---:|---:|---:|",
    ]
    for arch in vggnet.list_models():
        for name, member in vggnet.get_model_weights(arch).__members__.items():
            if name == "DEFAULT":
                continue
            w = member.value
            acc1, acc5 = (f"{w.metrics[k]:.3f}" if w.metrics[k] == w.metrics[k] else "n/a" for k in ("acc@1", "acc@5"))
            rows.append(
                f"| `{arch}` | `{member}` | {w.num_params:,} | {w.gflops:.3f} | {acc1} | {acc5} | {w.file_size:.3f} |"
            )
    return "\n".join(rows)


# --- the command-line reference --------------------------------------------------------------------


def _cell(text: str) -> str:
    """One line of Markdown table text: `<class>` shown as written, not taken for HTML."""
    text = " ".join(text.split()).replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")
    return text.replace("|", "\\|")


def _help(action: argparse.Action) -> str:
    """An action's help with argparse's `%(default)s`-style fields filled in, as `--help` shows it."""
    if not action.help:
        return ""
    fields = {k: v for k, v in vars(action).items() if v is not argparse.SUPPRESS}
    fields["choices"] = ", ".join(map(str, action.choices)) if action.choices is not None else ""
    return action.help % fields


def _option(action: argparse.Action) -> str:
    """How an argument is written: `--batch-size B`, `--amp / --no-amp`, `DATA ...`."""
    if not action.option_strings:
        metavar = action.metavar or action.dest
        return f"`{metavar}{' ...' if action.nargs in ('+', '*') else ''}`"
    metavar = (
        ""
        if action.nargs == 0
        else " "
        + (
            " ".join(action.metavar)
            if isinstance(action.metavar, tuple)
            else str(action.metavar or action.dest.upper())
        )
    )
    if action.choices is not None and action.metavar is None and action.nargs != 0:
        metavar = " {" + ",".join(map(str, action.choices)) + "}"
    return " / ".join(f"`{opt}{metavar if opt.startswith('--') or len(action.option_strings) == 1 else ''}`"
                      for opt in action.option_strings)  # fmt: skip


def _arguments_table(actions: Iterable[argparse.Action]) -> list[str]:
    rows = ["| argument | meaning |", "|---|---|"]
    for action in actions:
        if action.help is argparse.SUPPRESS or isinstance(action, argparse._HelpAction):
            continue
        rows.append(f"| {_option(action)} | {_cell(_help(action))} |")
    return rows if len(rows) > 2 else []


def _subparsers(parser: argparse.ArgumentParser) -> dict[str, argparse.ArgumentParser]:
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            return dict(action.choices)
    return {}


def cli_reference() -> str:
    """Every `vggnet` command: its description, usage and a table per argument group, from the parsers."""
    from vggnet.cli import COMMANDS, build_parser

    parser = build_parser()
    lines = ["### Global options", "", "```text", parser.format_usage().strip(), "```", ""]
    lines += _arguments_table(a for a in parser._actions if a.option_strings)
    for name, sub in _subparsers(parser).items():
        sub.formatter_class = lambda prog: argparse.HelpFormatter(prog, width=100)
        lines += ["", f"### `vggnet {name}`", "", _cell(sub.description or COMMANDS[name][1]), ""]
        lines += ["```text", sub.format_usage().strip(), "```", ""]
        for group in sub._action_groups:
            table = _arguments_table(group._group_actions)
            if table:
                title = {"positional arguments": "Arguments", "options": "Options"}.get(group.title or "", group.title)
                lines += [f"**{title}**", "", *table, ""]
    return "\n".join(lines)


# --- the speed tables ------------------------------------------------------------------------------


def _date(run: dict[str, Any]) -> str:
    return str(run.get("date") or run.get("date_utc") or "")[:10]


def _machine(run: dict[str, Any]) -> str:
    name = run.get("device_name") or run.get("device") or ""
    machine = run.get("machine") or {}
    if not name and machine:
        name = f"{machine.get('cpus', '?')} CPUs, {machine.get('platform', '')}"
    versions = run.get("versions") or {}
    torch = versions.get("torch") or run.get("torch") or machine.get("torch")
    load = run.get("load_average")
    parts = [str(name) or "machine not recorded"]
    if torch:
        parts.append(f"torch {torch}")
    if load:
        parts.append("load average " + ", ".join(f"{x:.2f}" for x in load))
    env = run.get("environment") or {}
    if env:
        parts.append(" ".join(f"{k}={v}" for k, v in env.items()))
    return "; ".join(parts)


def _num(x: Any, digits: int = 2) -> str:
    return "" if x is None else f"{x:,.{digits}f}"


def _bench_rows(run: dict[str, Any]) -> list[str]:
    """A `vggnet bench` report (schema vggnet.bench/1): one row per candidate."""
    size = "x".join(map(str, run["image_size"]))
    dtype = "float32 and int8" if run["dtype"] == "int8" else run["dtype"]  # int8 joins the float32 candidates
    head = f"{run['arch']} {dtype}, batch {run['batch_size']}, {size}" + (", compiled" if run["compile"] else "")
    head += "".join(f", {k}={v}" for k, v in (run.get("environment") or {}).items())
    speedups = run.get("speedup_vs_torchvision_eager", {})
    rows = []
    for r in run["results"]:
        # int8 operations against a floating-point peak would read as several times the peak: not shown
        peak = "" if "int8" in r["name"] else f"{r['peak_fraction'] * 100:.0f}%"
        rows.append(
            f"| {head} | {r['name']} | {_num(r['img_per_s'])} | {_num(r['latency_ms'], 1)} | "
            f"{_num(speedups.get(r['name']))}x | {peak} |"
        )
    return rows


BENCH_HEADER = [
    "| run | candidate | img/s | ms per batch | vs torchvision eager | of peak |",
    "|---|---|---:|---:|---:|---:|",
]


def _bench_table(runs: Sequence[dict[str, Any]]) -> list[str]:
    return [*BENCH_HEADER, *(row for run in runs for row in _bench_rows(run))]


def _int8_tables(data: dict[str, Any]) -> list[str]:
    lines = _bench_table(data.get("runs", []))
    accuracy = data.get("accuracy") or {}
    if accuracy:
        lines += ["", "| model (digits, 32x32) | top-1 agreement | accuracy fp32 | accuracy int8 | int8 bytes / fp32 |"]
        lines += ["|---|---:|---:|---:|---:|"]
        for name, part in accuracy.items():
            q, mem = part["quantize"], part.get("memory", {})
            lines.append(
                f"| {name} | {_num(q['top1_agreement'])}% | {_num(q['accuracy_fp32'])}% | "
                f"{_num(q['accuracy_int8'])}% | {_num(mem.get('int8_over_fp32'))} |"
            )
    return lines


def _int8_accuracy_table(data: dict[str, Any]) -> list[str]:
    """bench_int8.py's accuracy part run alone: one row per quantize setting."""
    lines = [
        "| setting | 7-bit activations | top-1 agreement | cosine | accuracy fp32 | accuracy int8 | quantize s "
        "| compile s |"
    ]
    lines += ["|---|---|---:|---:|---:|---:|---:|---:|"]
    for name, q in data.items():
        if name.startswith("quantize") and isinstance(q, dict):
            lines.append(
                f"| {name} | {q['reduce_range']} | {_num(q['top1_agreement'])}% | {_num(q['cosine'], 4)} | "
                f"{_num(q['accuracy_fp32'])}% | {_num(q['accuracy_int8'])}% | {_num(q['quantize_s'], 1)} | "
                f"{_num(q['compile_s'], 1)} |"
            )
    return lines


def _pipeline_table(data: dict[str, Any]) -> list[str]:
    what = f"{data['arch']}, batch {data['batch_size']}, {data['images']} images, {data['workers']} worker(s)"
    lines = ["| run | bare model img/s | predict img/s | evaluate img/s |", "|---|---:|---:|---:|"]
    ips = data["img_per_s"]
    lines.append(f"| {what} (median round) | {ips['bare model']} | {ips['predict']} | {ips['evaluate']} |")
    return lines


def _digits_table(data: dict[str, Any]) -> list[str]:
    lines = ["| run | epochs | test acc | val acc | train - val | seconds |", "|---|---:|---:|---:|---:|---:|"]
    for name, r in data["runs"].items():
        lines.append(
            f"| {name} | {r['epochs']} | {r['test_acc']}% | {r['val_acc']}% | {r['train_val_gap']} | {r['seconds']:,} |"
        )
    return lines


def _cpu_paths_table(data: dict[str, Any]) -> list[str]:
    lines = ["| part | path | batch | ms | speed-up |", "|---|---|---:|---:|---:|"]
    for r in data["results"]:
        lines.append(
            f"| {r['what']} | {r['name']} | {r['batch_size']} | {_num(r['ms'], 1)} | {_num(r['speedup_vs_first'])}x |"
        )
    return lines


def _winograd_tables(data: dict[str, Any]) -> list[str]:
    """bench_winograd.py: each layer direct against Winograd, then the whole model with and without it."""
    lines = [
        "| layer | batch | direct ms | Winograd ms | direct / Winograd | Winograd's error | direct's error "
        "| the rule at this shape |",
        "|---|---:|---:|---:|---:|---:|---:|---|",
    ]
    for r in data["layers"]:
        ms, err = r["ms"], r["relative_error"]
        lines.append(
            f"| {r['layer']} | {r['batch_size']} | {_num(ms['direct'])} | {_num(ms['winograd'])} | "
            f"{_num(r['direct_over_winograd'])}x | {err['winograd']:.1e} | {err['direct']:.1e} | "
            f"{'Winograd' if r['rule_takes_winograd'] else 'direct'} |"
        )
    lines += ["", "| whole model | batch | ms | speed-up | error vs eager |", "|---|---:|---:|---:|---:|"]
    for r in data["models"]:
        lines.append(
            f"| {data['arch']} {r['name']} | {r['batch_size']} | {_num(r['ms'], 1)} | "
            f"{_num(r['speedup_vs_direct'])}x | {r['relative_error_vs_eager']:.1e} |"
        )
    return lines


def _train_table(data: dict[str, Any]) -> list[str]:
    what = (
        f"{data['arch']} {data['precision']} {data['memory_format']}, batch {data['batch_size']}, {data['optimizer']}"
    )
    lines = ["| step | candidate | img/s | ms per step | vs torchvision eager |", "|---|---|---:|---:|---:|"]
    for r in data["results"]:
        lines.append(
            f"| {what} | {r['name']} | {_num(r['img_per_s'])} | {_num(r['step_ms'], 0)} | "
            f"{_num(r['speedup_vs_torchvision_eager'])}x |"
        )
    return lines


def _download_table(data: dict[str, Any]) -> list[str]:
    rate = data.get("server_rate_mib_s")
    lines = [f"Server rate: {'unlimited' if rate is None else f'{rate:g} MiB/s'}; {data['bytes']:,} bytes.", ""]
    lines += ["| path | best MiB/s | median s |", "|---|---:|---:|"]
    for name, best in data["mib_per_s_best"].items():
        lines.append(f"| {name} | {_num(best, 0)} | {_num(data['median_s'][name])} |")
    return lines


def _load_table(data: dict[str, Any]) -> list[str]:
    lines = [
        "| file format | file MiB | time vs torchvision-style | peak memory / file | torchvision-style peak / file |"
    ]
    lines += ["|---|---:|---:|---:|---:|"]
    for fmt in ("zip", "legacy"):
        d = data.get(fmt)
        if d:
            lines.append(
                f"| {fmt} | {d['file_bytes'] / 2**20:,.1f} | {_num(d['time_ratio'], 3)} | "
                f"{_num(d['peak_over_file'], 3)} | {_num(d['torchvision_peak_over_file'])} |"
            )
    return lines


def _finetune_table(data: dict[str, Any]) -> list[str]:
    lines = ["| arch | batch | size | gradient checkpointing | stored after forward MiB | peak MiB |"]
    lines += ["|---|---:|---:|---|---:|---:|"]
    for r in data.get("activation_memory", []):
        lines.append(
            f"| {r['arch']} | {r['batch']} | {r['size']} | {r['grad_checkpointing']} | "
            f"{r['stored_after_forward_mib']:,} | {r['peak_mib']:,} |"
        )
    return lines


def _inference_table(data: dict[str, Any]) -> list[str]:
    return _bench_table(data["runs"])


def _startup_table(data: dict[str, Any]) -> list[str]:
    lines = ["| case | median s | fastest s | vs `import torch` | imports torch |", "|---|---:|---:|---:|---|"]
    torch_s = data["cases"]["import torch"]["median_s"]
    for case, r in data["cases"].items():
        lines.append(
            f"| `{case}` | {_num(r['median_s'], 3)} | {_num(r['min_s'], 3)} | "
            f"{r['median_s'] - torch_s:+.3f} s | {'yes' if r['imports_torch'] else 'no'} |"
        )
    return lines


def _compile_table(data: dict[str, Any]) -> list[str]:
    """bench_compile.py: seconds per compiled fine-tuning epoch, each library in a fresh process."""
    lines = [
        f"{data['arch']}, {data['image_size']}x{data['image_size']}, batch {data['batch_size']}, "
        f"{data['steps_per_epoch']} steps an epoch.",
        "",
        "| library | precision | head-only epoch s | unfreeze epoch s | steady epoch s | eager epoch s | graphs |",
        "|---|---|---:|---:|---:|---:|---|",
    ]
    for r in data["runs"]:
        graphs = ", ".join(f"{k} {v}" for k, v in r["graphs"].items())
        lines.append(
            f"| {r['library']} | {r['precision']} | {_num(r['head_only_s'])} | {_num(r['unfreeze_s'])} | "
            f"{_num(r['steady_s'])} | {_num(r['eager_s'])} | {graphs} |"
        )
    return lines


def _cpu_peers_table(data: dict[str, Any]) -> list[str]:
    """bench_cpu_peers.py: every peer at each batch size, with the ISA and the load around each."""
    m = data["machine"]
    lines = [
        f"CPU {m['cpu_model']}; ISA {', '.join(m['isa'])}; OpenVINO {m.get('openvino', '')} "
        f"(default precision {m.get('openvino_default_precision', '?')}); weights {data['weights']}, "
        f"{data['images']} photo crops at {data['image_size']} px.",
        "",
        _peers_timing([b.get("timing") for b in data["batches"]]),
        "",
        "| batch | candidate | precision | ms per batch | vs torchvision fp32 | top-1 agreement | cosine | load |",
        "|---:|---|---|---:|---:|---:|---:|---|",
    ]
    for b in data["batches"]:
        load = f"{b['load_before'][0]:.2f} -> {b['load_after'][0]:.2f}"
        for r in b["rows"]:
            lines.append(
                f"| {b['batch']} | {r['name']} | {r.get('precision', '')} | {_num(r['ms'], 1)} | "
                f"{_num(r['speedup_vs_torchvision'])}x | {_num(r['top1_agreement'], 1)}% | "
                f"{_num(r['cosine'], 5)} | {load} |"
            )
    return lines


def _peers_timing(timings: list[dict[str, Any] | None]) -> str:
    """How bench_cpu_peers.py timed a run (each batch size's orders drawn from its own seed): files written
    before it recorded that took the fixed order."""
    timing = timings[0]
    if timing is None:
        return "Timing: the candidates in one fixed order, each turn timed at once (before 2026-12-07 11:49 UTC)."
    pause = f"{timing['settle_s'] * 1000:.0f} ms of idle cores" if timing["settle_s"] else "no pause"
    seeds = ", ".join(dict.fromkeys(str(t["seed"]) for t in timings if t))
    return (
        f"Timing: the order {timing['order']} (seed {seeds}); before each turn {pause} and "
        f"{timing['untimed_calls']} untimed call(s)."
    )


def _cpu_layers_table(data: dict[str, Any]) -> list[str]:
    """bench_cpu_layers.py: each path's wall time against oneDNN's own, then the fixed cost of one oneDNN call."""
    lines = [
        f"CPU {data['machine']['cpu_model']}; {data['calls']} timed and {data['calls']} verbose calls each, medians.",
        "",
        "| path | dtype | batch | wall ms | oneDNN ms | outside oneDNN ms | primitives per call | oneDNN ms by kind |",
        "|---|---|---:|---:|---:|---:|---:|---|",
    ]
    for r in data["rows"]:
        kinds = ", ".join(f"{k} {v:.2f}" for k, v in sorted(r["onednn_ms_by_kind"].items(), key=lambda kv: -kv[1]))
        lines.append(
            f"| {r['path']} | {r['dtype']} | {r['batch']} | {_num(r['wall_ms'])} | {_num(r['onednn_ms'])} | "
            f"{_num(r['outside_onednn_ms'])} | {r['primitives_per_call']} | {kinds} |"
        )
    probe = data["fixed_cost_probe"]
    lines += [
        "",
        f"| one {probe['channels']}-channel 3x3 convolution on {probe['map']}x{probe['map']} | wall µs | oneDNN µs |",
        "|---|---:|---:|",
    ]
    lines += [f"| {k} | {_num(r['wall_us'], 1)} | {_num(r['onednn_us'], 1)} |" for k, r in probe["by_dtype"].items()]
    return lines


def _int8_layers_table(data: dict[str, Any]) -> list[str]:
    """bench_int8_layers.py: vggnet's and OpenVINO's int8 layer by layer, per batch size, with each side's wall."""
    lines = [f"CPU {data['machine']['cpu_model']}; medians over the rounds, each layer timed inside whole passes.", ""]
    for b in data["batches"]:
        walls = ", ".join(f"{k} {_num(v)}" for k, v in b["wall_ms"].items())
        lines += [f"Batch {b['batch']}, {b['rounds']} rounds; wall ms per pass: {walls}.", ""]
        lines += ["| layer | vggnet ms | OpenVINO ms |", "|---|---:|---:|"]
        for r in b["layers"]:
            ours, theirs = ("" if v is None else _num(v, 3) for v in (r["vggnet_ms"], r["openvino_ms"]))
            lines.append(f"| {_cell(r['layer'])} | {ours} | {theirs} |")
        lines.append("")
    return lines


def _formats_table(data: dict[str, Any]) -> list[str]:
    """bench_formats.py: load time per weights format, then latency per exported format against eager."""
    lines = ["| weights format | load ms | load + touch ms |", "|---|---:|---:|"]
    for name, r in data["load"].items():
        lines.append(f"| {name} | {_num(r['load_s'] * 1e3, 1)} | {_num(r['load_and_touch_s'] * 1e3, 1)} |")
    loads = data.get("artifact_load_s", {})
    if loads:
        lines += ["", "| exported artifact, loaded by | load ms |", "|---|---:|"]
        lines += [f"| {name} | {_num(seconds * 1e3, 1)} |" for name, seconds in loads.items()]
    lines += ["", "| runs as | batch 1 ms | vs eager | max abs diff |", "|---|---:|---:|---:|"]
    latency = data["latency_batch1"]
    eager = latency.get("vggnet eager", {}).get("latency_ms")
    for name, r in latency.items():
        ratio = eager / r["latency_ms"] if eager else None
        diff = data.get("max_abs_diff", {}).get(name)
        lines.append(
            f"| {name} | {_num(r['latency_ms'], 1)} | {_num(ratio)}x | {'' if diff is None else f'{diff:.1e}'} |"
        )
    return lines


def _kind(name: str, data: dict[str, Any]) -> Callable[[dict[str, Any]], list[str]] | None:
    """The table maker for a results file, by its schema or suite; None for a shape this page does not know."""
    if str(data.get("schema", "")).startswith("vggnet.") and "results" in data:
        return lambda d: _bench_table([d])
    suite = data.get("suite")
    makers: dict[str, Callable[[dict[str, Any]], list[str]]] = {
        "inference": _inference_table,
        "int8": _int8_tables,
        "pipeline": _pipeline_table,
        "cpu_paths": _cpu_paths_table,
        "train": _train_table,
        "compile": _compile_table,
        "int8-isa-cap": lambda d: _bench_table(list(d["runs"].values())),
        "cpu_peers": _cpu_peers_table,
        "cpu_layers": _cpu_layers_table,
        "int8_layers": _int8_layers_table,
        "formats": _formats_table,
        "winograd": _winograd_tables,
    }
    if suite == "int8" and "runs" not in data:
        return _int8_accuracy_table
    if suite in makers:
        return makers[str(suite)]
    if name.startswith("digits-"):
        return _digits_table
    if name.startswith("bench_download"):
        return _download_table
    if name == "bench_load.json":
        return _load_table
    if name.startswith("finetune-"):
        return _finetune_table
    if name.startswith("startup-"):
        return _startup_table
    return None


def speed_tables(folder: Path | None = None) -> str:
    """One section per results file: its machine, date and figures as a table (newest first)."""
    folder = folder or ROOT / "benchmarks" / "results"
    found = []
    for path in sorted(folder.glob("*.json")):
        data = json.loads(path.read_text())
        found.append((_date(data), path.name, data))
    found.sort(key=lambda item: (item[0], item[1]), reverse=True)
    lines: list[str] = []
    untabulated = []
    for date, name, data in found:
        make = _kind(name, data)
        if make is None:
            untabulated.append(name)
            continue
        try:
            table = make(data)
        except (KeyError, TypeError, ValueError):  # a file of a known suite in an older shape
            untabulated.append(name)
            continue
        when = date or "undated: the commit that added the file dates it"
        lines += [f"### `{name}`", "", f"*{when}; {_machine(data)}*", "", *table, ""]
    if untabulated:
        lines += ["### Not tabulated here", "", "Files of a shape this page has no table for (read the JSON):", ""]
        lines += [f"- `benchmarks/results/{name}`" for name in untabulated] + [""]
    return "\n".join(lines)


# --- the changelog ---------------------------------------------------------------------------------


def changelog() -> str:
    """CHANGELOG.md without its first heading (the page has its own), or a line saying there is none yet."""
    path = ROOT / "CHANGELOG.md"
    if not path.is_file():
        return "No `CHANGELOG.md` yet: the changes of each release will be listed here."
    lines = path.read_text(encoding="utf-8").splitlines()
    if lines and lines[0].startswith("# "):
        lines = lines[1:]
    return "\n".join(lines).strip()


# --- the layout ------------------------------------------------------------------------------------

PACKAGES = ("models", "hub", "data", "train", "batch", "seeing", "deploy", "cli")


def _docstring(module: str) -> str:
    import importlib
    import inspect

    return inspect.cleandoc(importlib.import_module(module).__doc__ or "")


def layout() -> str:
    """Each package of vggnet with its docstring: what it holds and its modules, bottom up."""
    lines = []
    for name in PACKAGES:
        doc = _docstring(f"vggnet.{name}")
        if name == "cli":
            doc = doc.split("\n\n")[0]  # the rest is the how-to, shown on its own
        lines += [f"### `vggnet/{name}/`", "", doc, ""]
    return "\n".join(lines)


def layers() -> str:
    """The layers tests/test_layout.py enforces, bottom first, as a numbered list."""
    import importlib.util

    spec = importlib.util.spec_from_file_location("vggnet_test_layout", ROOT / "tests" / "test_layout.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)  # the layers are the test's own table: the docs cannot drift from it
    return "\n".join(f"{i}. " + ", ".join(f"`{p}`" for p in sorted(parts)) for i, parts in enumerate(module.LAYERS, 1))


def cli_howto() -> str:
    """How to add a command: `vggnet.cli`'s docstring after its first paragraph."""
    return _docstring("vggnet.cli").split("\n\n", 1)[1]


MARKERS: dict[str, Callable[[], str]] = {
    "<!-- vggnet:models-table -->": models_table,
    "<!-- vggnet:cli-reference -->": cli_reference,
    "<!-- vggnet:speed-tables -->": speed_tables,
    "<!-- vggnet:changelog -->": changelog,
    "<!-- vggnet:layout -->": layout,
    "<!-- vggnet:layers -->": layers,
    "<!-- vggnet:cli-howto -->": cli_howto,
}


def on_page_markdown(markdown: str, **kwargs: Any) -> str:
    """MkDocs event: replace each marker of a page by its generated text."""
    for marker, make in MARKERS.items():
        if marker in markdown:
            markdown = markdown.replace(marker, make())
    return markdown
