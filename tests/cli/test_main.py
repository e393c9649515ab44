"""`vggnet` itself: the table of commands, help, version, exit codes, one-line errors, as a real process."""

from __future__ import annotations

import json
import sys

import pytest

import vggnet
from tests.cli.helpers import (
    PHOTOS,
    VENV_BIN,
    run,
)
from vggnet.cli import main


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["summary", "vgg16", "--input-size", "31"], "at least 32 px"),
        (["summary", "vgg16", "--input-size", "224x16"], "at least 32 px"),
        (["summary", "vgg16", "--input-size", "big"], "N or HxW"),
        (["summary", "vgg17"], "valid: vgg11, vgg11_bn, vgg13, vgg13_bn, vgg16, vgg16_bn, vgg19, vgg19_bn"),
        (["summary", "vgg16", "--batch-size", "0"], "positive integer"),
        (["summary", "vgg16", "--plot", "plot.txt"], "use one of .svg, .png"),
        (["summary"], "required: MODEL"),
        (["frobnicate"], "invalid choice"),
        (["download"], "or pass --all"),
        (["download", "vgg17"], "valid: vgg11"),
        (["download", "VGG16_Weights.IMAGENET1K_V2"], "VGG16_Weights.IMAGENET1K_FEATURES"),
        (["cache", "--remove", "vgg16"], "not in the cache"),
        (["summary", "vgg16", "--input-size", "224x224x3"], "expected N or HxW in pixels (e.g. 224 or 224x320)"),
        (["verify", "no-such-dir"], "no-such-dir is not a directory"),
        (["predict", str(PHOTOS), "--image-size", "8"], "at least 32 px"),
        (["predict", str(PHOTOS), "--device", "bogus"], "no device 'bogus' here; valid: cpu"),
        (["predict", str(PHOTOS), "--device", "cuda:99"], "valid: cpu"),
        (["finetune", "data", "--device", "bogus"], "valid: cpu"),
        (["finetune", "data", "--image-size", "8"], "argument --image-size: VGG needs at least 32 px"),
        (["predict", "no-such-photo.jpg"], "no-such-photo.jpg: no such image file"),
        (["predict", str(PHOTOS / "*.gif")], "no files match"),
        (["predict", str(PHOTOS), "--weights", "IMAGENET1K_V7"], "valid: VGG16_Weights.IMAGENET1K_V1"),
        (["predict", str(PHOTOS), "--weights", "VGG16_Weights.IMAGENET1K_FEATURES"], "has no classifier"),
        (["predict", str(PHOTOS), "--weights", "VGG16_Weights.IMAGENET1K_V1", "--arch", "vgg11"], "not for --arch"),
        (["predict", str(PHOTOS), "--weights", "missing.pth"], "no such checkpoint file"),
    ],
)
def test_usage_errors_exit_2_with_one_line_and_no_traceback(tmp_path, monkeypatch, capsys, argv, message):
    monkeypatch.chdir(tmp_path)
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err
    assert not list(tmp_path.iterdir())  # nothing written, nothing downloaded


def test_debug_shows_the_traceback(tmp_path, capsys):
    assert main(["--debug", "summary", "vgg16", "--plot", str(tmp_path / "plot.txt")]) == 2
    err = capsys.readouterr().err
    assert "Traceback" in err and "use one of .svg" in err


def test_help_and_version(capsys):
    assert main(["--help"]) == 0
    out = capsys.readouterr().out
    for command in ("summary", "list", "predict", "download", "verify", "cache"):
        assert command in out
    assert main(["--version"]) == 0 and vggnet.__version__ in capsys.readouterr().out
    assert main(["predict", "--help"]) == 0 and "--topk" in capsys.readouterr().out


def test_the_table_of_commands_is_every_add_run_pair_and_each_takes_debug_and_quiet():
    import importlib
    import inspect

    from vggnet import cli

    pairs = {}
    for module_name in sorted({module for module, _ in cli.COMMANDS.values()}):
        module = importlib.import_module(f"vggnet.cli.{module_name}")
        own = {name: f for name, f in vars(module).items() if inspect.isfunction(f) and f.__module__ == module.__name__}
        adds = {name[4:] for name in own if name.startswith("add_")}
        assert adds == {name[4:] for name in own if name.startswith("run_")}, module.__name__
        pairs.update({name: module_name for name in adds})
    assert pairs == {name: module for name, (module, _) in cli.COMMANDS.items()}
    sub = next(a for a in cli.build_parser()._actions if a.dest == "command")
    for name, parser in sub.choices.items():  # type: ignore[union-attr]
        assert {"--debug", "--quiet", "-q"} <= set(parser._option_string_actions), name


def test_options_after_the_command(tmp_path, capsys):
    assert main(["summary", "vgg11", "--quiet", "--plot", str(tmp_path / "p.svg")]) == 0
    captured = capsys.readouterr()
    assert captured.err == "" and "7.61G" in captured.out
    assert main(["-q", "summary", "vgg11", "--json"]) == 0 and json.loads(capsys.readouterr().out)["arch"] == "vgg11"


# --- as a real process -------------------------------------------------------------------------------


def test_python_dash_m_summary_json():
    proc = run(sys.executable, "-m", "vggnet", "summary", "vgg16", "--json")
    assert proc.returncode == 0, proc.stderr
    data = json.loads(proc.stdout)
    assert (data["params"], round(data["macs"] / 1e9, 2)) == (138_357_544, 15.47)


@pytest.mark.slow
def test_installed_script_exit_codes(tmp_path):
    script = str(VENV_BIN / "vggnet")
    assert run(script, "--version").stdout.strip() == f"vggnet {vggnet.__version__}"
    proc = run(script, "summary", "vgg16", "--input-size", "16")
    assert proc.returncode == 2 and "at least 32 px" in proc.stderr and "Traceback" not in proc.stderr
    (tmp_path / "vgg11-00000000.pth").write_bytes(b"flipped")
    proc = run(script, "verify", str(tmp_path))
    assert proc.returncode == 1 and "is corrupt" in proc.stderr
    proc = run(script, "list", env={"VGGNET_HOME": str(tmp_path)})
    assert proc.returncode == 0 and proc.stdout.count("\nvgg") == 9


NEVER = "http://127.0.0.1:9/never-0123abcd.pth"  # nothing listens there: a command that fetched it would fail


def test_export_refuses_its_output_and_shapes_before_any_weights_are_fetched(tmp_path, capsys):
    victim = tmp_path / "notes.txt"
    victim.write_text("a text file elsewhere")
    (tmp_path / "link.onnx").symlink_to(victim)
    (tmp_path / "folder.pt2").mkdir()
    cases = [
        (["link.onnx", "--format", "onnx"], "link.onnx: it is a symbolic link; vggnet never writes through one"),
        (["folder.pt2", "--format", "pt2"], "folder.pt2: it is a folder; name the file to write in it"),
        (["x.pt2", "--format", "pt2", "--dynamic-size", "--image-size", "63"], "must be from 64 to 8192 px"),
    ]
    for args, message in cases:
        args[0] = str(tmp_path / args[0])
        assert main(["export", "vgg11", *args, "--weights", NEVER]) == 2
        err = capsys.readouterr().err
        assert message in err and len(err.strip().splitlines()) == 1, err
    assert victim.read_text() == "a text file elsewhere"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["folder.pt2", "link.onnx", "notes.txt"]


def test_a_library_page_of_text_reaches_the_user_as_one_line(monkeypatch, capsys):
    import vggnet.cli.costs

    def fails(args):
        raise RuntimeError("Failed running call_function conv2d\n\nfrom user code:\n   File 'x.py', line 3\n")

    monkeypatch.setattr(vggnet.cli.costs, "run_summary", fails)
    assert main(["summary", "vgg11"]) == 1
    err = capsys.readouterr().err
    assert err == "vggnet: error: RuntimeError: Failed running call_function conv2d (the rest with --debug)\n"
