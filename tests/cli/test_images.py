"""predict, evaluate, embed (vggnet.cli.images): checked with a seeded vgg11 whose answers the test computes."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import vggnet
from tests.cli.helpers import (
    PHOTO_NAMES,
    PHOTOS,
    SMALL,
    VENV_BIN,
    check_predictions,
    expected_topk,
    make_enum,
    run,
)
from tests.helpers import PRESET, small_model, torchrun, write_images
from tests.helpers import file_sha256 as sha256
from vggnet.cli import main
from vggnet.data.decode import load_image
from vggnet.data.transforms import ImageClassification
from vggnet.hub._fetching import OFFICIAL_BASE
from vggnet.models import weights as weights_module
from vggnet.models.finetuned import FORMAT
from vggnet.models.weights import IMAGENET_CATEGORIES, Weights

# --- predict -----------------------------------------------------------------------------------------


@pytest.mark.slow
def test_predict_a_directory_with_a_local_checkpoint(seeded_vgg11, capsys):
    paths = [PHOTOS / n for n in PHOTO_NAMES]
    argv = ["predict", str(PHOTOS), "--weights", str(seeded_vgg11), "--topk", "3", "--batch-size", "3"]
    assert main([*argv, "--json", "--device", "cpu"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert (data["arch"], data["device"], data["topk"]) == ("vgg11", "cpu", 3)  # the model is read off the keys
    expected = expected_topk(seeded_vgg11, paths, 3)
    check_predictions(data["results"], expected, paths)
    assert len({r["predictions"][0]["index"] for r in data["results"]}) > 1  # the photos are told apart

    assert main(argv) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0] == str(paths[0]) and len(lines) == 4 * (1 + 3)
    # the text run repeats the JSON run (same batches, same arithmetic), so its rounding is compared
    # with the JSON's, which was checked against the reference above to 1e-4
    top = data["results"][0]["predictions"][0]
    index, prob = top["index"], top["probability"]
    assert lines[1].split() == [f"{prob:.2%}", *IMAGENET_CATEGORIES[index].split(), f"({index})"]


@pytest.mark.slow
def test_predict_globs_image_size_and_a_bad_image(seeded_vgg11, tmp_path, capsys):
    broken = tmp_path / "broken.png"
    broken.write_bytes(b"not a png at all")
    argv = ["predict", str(PHOTOS / "c*.*"), str(broken), "--weights", str(seeded_vgg11), "--topk", "2"]
    assert main([*argv, "--image-size", "160", "--json", "-q"]) == 1  # one image failed: exit 1, the others done
    captured = capsys.readouterr()
    assert str(broken) in captured.err and "Traceback" not in captured.err
    data = json.loads(captured.out)
    paths = [PHOTOS / "camera.png", PHOTOS / "chelsea.png", PHOTOS / "coffee.jpg"]
    assert data["results"][-1] == {"image": str(broken), "error": data["results"][-1]["error"]}
    check_predictions(data["results"][:-1], expected_topk(seeded_vgg11, paths, 2, crop=160), paths)


@pytest.mark.slow
def test_predict_with_a_record_fetched_through_the_mirror(seeded_vgg11, monkeypatch, capsys):
    record = Weights(url=OFFICIAL_BASE + seeded_vgg11.name, sha256=sha256(seeded_vgg11), categories=IMAGENET_CATEGORIES)
    monkeypatch.setattr(
        weights_module, "WEIGHTS_ENUMS", {"vgg11": make_enum("VGG11_Weights", {"IMAGENET1K_V1": record})}
    )
    monkeypatch.setenv("VGGNET_MIRROR", str(seeded_vgg11.parent))
    photo = PHOTOS / "chelsea.png"
    assert main(["predict", str(photo), "--arch", "vgg11", "--json", "--device", "cpu"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert data["weights"] == "VGG11_Weights.IMAGENET1K_V1"
    check_predictions(data["results"], expected_topk(seeded_vgg11, [photo], 5), [photo])


@pytest.mark.slow
def test_predict_with_a_finetuned_checkpoint_uses_its_labels_and_preset(seeded_vgg11, tmp_path, capsys):
    finetune = pytest.importorskip("vggnet.train.finetune")
    state = torch.load(seeded_vgg11, weights_only=True, mmap=True)
    state["classifier.6.weight"], state["classifier.6.bias"] = state["classifier.6.weight"][:3], torch.zeros(3)
    preprocessing = {"crop_size": 192, "resize_size": 200, "mean": [0.5, 0.4, 0.3], "std": [0.2, 0.2, 0.2]}
    classes = ["ant", "bee", "cicada"]
    checkpoint = {
        "format": FORMAT, "arch": "vgg11", "in_chans": 3, "classes": classes, "mode": "full",
        "preprocessing": {**preprocessing, "interpolation": "bilinear"}, "epoch": 1, "val_acc": 50.0,
        "weights": None, "state_dict": state,
    }  # fmt: skip
    path = tmp_path / "best.pth"
    finetune.save_checkpoint(checkpoint, path)
    del state, checkpoint

    paths = [PHOTOS / "chelsea.png", PHOTOS / "coffee.jpg"]
    assert main(["predict", *map(str, paths), "--weights", str(path), "--topk", "2", "--json"]) == 0
    results = json.loads(capsys.readouterr().out)["results"]
    model = vggnet.vgg11(num_classes=3, init_weights=False)
    model.load_state_dict(torch.load(path, weights_only=True)["state_dict"])
    preset = ImageClassification(**preprocessing)
    with torch.inference_mode():
        probs = model.eval()(torch.stack([preset(load_image(p)) for p in paths])).softmax(dim=1)
    for result, row in zip(results, probs):
        top = row.topk(2)
        assert [p["label"] for p in result["predictions"]] == [classes[i] for i in top.indices.tolist()]
        assert [p["probability"] for p in result["predictions"]] == pytest.approx(top.values.tolist(), abs=1e-4)


@pytest.mark.slow
def test_predict_with_weights_none_is_a_random_model_with_imagenet_labels(capsys):
    photo = PHOTOS / "coffee.jpg"
    assert main(["predict", str(photo), "--weights", "none", "--arch", "vgg11", "--json", "--device", "cpu"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert (data["arch"], data["weights"], data["topk"]) == ("vgg11", "random", 5)
    assert all(p["label"] == IMAGENET_CATEGORIES[p["index"]] for p in data["results"][0]["predictions"])


@pytest.mark.slow
def test_predict_refuses_a_checkpoint_of_another_model(seeded_vgg11, capsys):
    assert main(["predict", str(PHOTOS / "coffee.jpg"), "--weights", str(seeded_vgg11), "--arch", "vgg13"]) == 2
    assert "holds vgg11 weights, not vgg13" in capsys.readouterr().err


@pytest.mark.slow
def test_predict_as_the_installed_script_with_a_url(seeded_vgg11, http_server, tmp_path):
    url = http_server.add(f"/checkpoints/{seeded_vgg11.name}", seeded_vgg11)
    photo = PHOTOS / "rocket.jpg"
    env = {"VGGNET_HOME": str(tmp_path)}
    proc = run(str(VENV_BIN / "vggnet"), "predict", str(photo), "--weights", url, "--json", env=env)
    assert proc.returncode == 0, proc.stderr
    check_predictions(json.loads(proc.stdout)["results"], expected_topk(seeded_vgg11, [photo], 5), [photo])
    assert (tmp_path / seeded_vgg11.name).stat().st_size == seeded_vgg11.stat().st_size  # verified by its name
    assert "%|" not in proc.stderr and "B/s" not in proc.stderr  # stderr is not a terminal: no progress bar


@pytest.mark.slow
def test_predict_with_a_local_checkpoint_whose_name_looks_like_a_digest(seeded_vgg11, tmp_path, capsys):
    dated = tmp_path / "vgg11-epoch-00000010.pth"
    dated.symlink_to(seeded_vgg11)
    photo = PHOTOS / "coffee.jpg"
    assert main(["predict", str(photo), "--weights", str(dated), "--json", "--device", "cpu"]) == 0
    check_predictions(json.loads(capsys.readouterr().out)["results"], expected_topk(seeded_vgg11, [photo], 5), [photo])


def test_predict_refuses_a_state_dict_that_is_no_vgg(tmp_path, capsys):
    path = tmp_path / "resnet.pth"
    torch.save({"conv1.weight": torch.ones(1)}, path)
    assert (
        main(["predict", str(PHOTOS / "coffee.jpg"), "--weights", str(path)]) == 1
    )  # a file vggnet cannot use fails (1); a mistyped argument is usage (2)
    err = capsys.readouterr().err
    assert f"{path} is not a VGG checkpoint: its keys match none of vgg11, vgg11_bn," in err and "Traceback" not in err


@pytest.mark.slow
def test_predict_image_size_keeps_a_finetuned_checkpoints_normalization(seeded_vgg11, tmp_path, capsys):
    finetune = pytest.importorskip("vggnet.train.finetune")
    state = torch.load(seeded_vgg11, weights_only=True, mmap=True)
    mean, std = [0.5, 0.4, 0.3], [0.2, 0.2, 0.2]
    checkpoint = {
        "format": FORMAT, "arch": "vgg11", "in_chans": 3, "classes": list(IMAGENET_CATEGORIES), "mode": "full",
        "preprocessing": {"crop_size": 224, "resize_size": 256, "mean": mean, "std": std, "interpolation": "bicubic"},
        "epoch": 1, "val_acc": 50.0, "weights": None, "state_dict": state,
    }  # fmt: skip
    path = tmp_path / "best.pth"
    finetune.save_checkpoint(checkpoint, path)
    photo = PHOTOS / "rocket.jpg"
    assert main(["predict", str(photo), "--weights", str(path), "--image-size", "160", "--topk", "3", "--json"]) == 0
    preset = ImageClassification(crop_size=160, resize_size=183, mean=mean, std=std, interpolation="bicubic")
    with torch.inference_mode():
        model = vggnet.vgg11(init_weights=False)
        model.load_state_dict(state)
        top = model.eval()(preset(load_image(photo))[None]).softmax(dim=1)[0].topk(3)
    predictions = json.loads(capsys.readouterr().out)["results"][0]["predictions"]
    assert [p["index"] for p in predictions] == top.indices.tolist()
    assert [p["probability"] for p in predictions] == pytest.approx(top.values.tolist(), abs=1e-4)


# --- hostile images and sizes (issue 11 item 6) -------------------------------------------------------


@pytest.mark.slow
def test_predict_names_and_skips_each_bad_image_and_classifies_the_rest(seeded_vgg11, tmp_path, capsys):
    import io
    import shutil

    from PIL import Image

    from tests.helpers import png_declaring

    folder = tmp_path / "photos"
    folder.mkdir()
    for name in ("camera.png", "coffee.jpg"):
        shutil.copy(PHOTOS / name, folder / name)
    (folder / "bomb.png").write_bytes(png_declaring(30000, 30000))  # over twice Pillow's limit: its own error
    (folder / "big.png").write_bytes(png_declaring(10000, 10000))
    Image.new("L", (1, 60000)).save(folder / "tall.png")  # 254 bytes, 11 GiB once resized
    (folder / "notes.jpg").write_text("not a JPEG")
    buf = io.BytesIO()
    Image.new("RGB", (300, 300), "blue").save(buf, "JPEG")
    (folder / "cut.jpg").write_bytes(buf.getvalue()[:400])
    argv = ["predict", str(folder), "--weights", str(seeded_vgg11), "--topk", "2", "--batch-size", "2", "--json", "-q"]
    assert main(argv) == 1  # five bad images: each named, the two good ones classified, exit 1 at the end
    captured = capsys.readouterr()
    errors = captured.err.splitlines()
    assert "Traceback" not in captured.err and len(errors) == 5
    for name, problem in [
        ("big.png", "its header declares 10000x10000 = 100,000,000 pixels, over the budget"),
        ("bomb.png", "its header declares 900,000,000 pixels, over the budget"),
        ("cut.jpg", "not a readable image"),
        ("notes.jpg", "not an image Pillow can identify"),
        ("tall.png", "aspect ratio 60,000:1"),
    ]:
        prefix = f"vggnet: cannot read the image {folder / name}: "
        assert any(line.startswith(prefix) and problem in line and line.count(str(folder)) == 1 for line in errors)
    data = json.loads(captured.out)
    good = [folder / "camera.png", folder / "coffee.jpg"]
    check_predictions([r for r in data["results"] if "predictions" in r], expected_topk(seeded_vgg11, good, 2), good)
    assert sorted(Path(r["image"]).name for r in data["results"] if "error" in r) == [
        "big.png", "bomb.png", "cut.jpg", "notes.jpg", "tall.png",
    ]  # fmt: skip


@pytest.mark.slow
def test_predict_honours_the_pixel_budget_variable(seeded_vgg11, monkeypatch, capsys):
    monkeypatch.setenv("VGGNET_MAX_IMAGE_PIXELS", "100000")  # camera.png is 512x512 = 262,144 pixels
    argv = ["predict", str(PHOTOS / "camera.png"), "--weights", str(seeded_vgg11), "-q"]
    assert main(argv) == 1
    assert "262,144 pixels, over the budget of 100,000 (set VGGNET_MAX_IMAGE_PIXELS" in capsys.readouterr().err


@pytest.mark.parametrize(
    "argv",
    [
        ["predict", str(PHOTOS), "--image-size", "5000"],
        ["predict", str(PHOTOS), "--image-size", "1025"],
        ["finetune", "data", "--image-size", "2048"],
        ["bench", "--image-size", "224x5000"],
    ],
)
def test_image_size_has_an_upper_bound(tmp_path, monkeypatch, capsys, argv):
    monkeypatch.chdir(tmp_path)
    assert main(argv) == 2  # refused while parsing: nothing loaded, nothing allocated
    err = capsys.readouterr().err
    assert "at most 1024 px per side" in err and "Traceback" not in err
    assert not list(tmp_path.iterdir())


# --- evaluate, predict to a file, embed, under torchrun (issue 14) ----------------------------------


@pytest.mark.slow
def test_evaluate_command_prints_the_figures_and_draws_the_matrix(seven_classes, tmp_path, capsys):
    Image = pytest.importorskip("PIL.Image")
    from vggnet.batch.evaluate import evaluate

    weights, data = seven_classes
    plot = tmp_path / "confusion.png"
    assert main(["evaluate", str(data), "--weights", str(weights), *SMALL, "--json", "--plot", str(plot)]) == 0
    captured = capsys.readouterr()
    report = json.loads(captured.out)
    want = evaluate(small_model(), PRESET, data, workers=0, progress=False)
    assert (report["arch"], report["weights"], report["images"], report["failed"]) == ("vgg11", str(weights), 14, 1)
    assert report["confusion"] == want.confusion.tolist()
    assert report["acc1"] == pytest.approx(want.acc1) and report["acc5"] == pytest.approx(want.acc5)
    assert report["per_class"] == pytest.approx(want.per_class) and report["layout"] == "sorted"
    assert "zz-broken.png" in captured.err and "Traceback" not in captured.err
    with Image.open(plot) as img:
        assert img.format == "PNG" and img.width > 7 * 10

    assert main(["evaluate", str(data), "--weights", str(weights), *SMALL]) == 0
    text = capsys.readouterr().out
    assert f"acc@1  {want.acc1:.3%}" in text and f"acc@5  {want.acc5:.3%}" in text and "per class acc@1" in text
    assert "14 images, 7 classes, 1 unreadable" in text

    assert main(["evaluate", str(data), "--weights", str(weights), "--plot", "m.svg"]) == 2
    assert "name a .png file" in capsys.readouterr().err
    assert main(["evaluate", str(tmp_path / "nothing"), "--weights", str(weights)]) == 2
    assert "no such folder" in capsys.readouterr().err


@pytest.mark.slow
def test_predict_to_a_file_resumes_and_reads_stdin(seven_classes, tmp_path, monkeypatch, capsys):
    import io

    weights, data = seven_classes
    out = tmp_path / "out.jsonl"
    argv = ["predict", str(data), "--weights", str(weights), "--topk", "2", *SMALL, "--output", str(out)]
    assert main(argv) == 1  # one unreadable image: reported, the run goes on, exit 1
    captured = capsys.readouterr()
    assert "zz-broken.png" in captured.err and "15 images (1 unreadable)" in captured.err
    records = [json.loads(line) for line in out.read_text().splitlines()]
    assert len(records) == 15 and sum("error" in r for r in records) == 1
    assert all(r["predictions"][0]["label"].startswith("class ") for r in records if "error" not in r)
    first = out.read_text()

    lines = first.splitlines(keepends=True)
    out.write_text("".join(lines[:4]) + lines[4][:7])  # killed while writing line 5
    assert main([*argv, "--resume"]) == 0  # the unreadable image was recorded before: nothing fails now
    assert out.read_text() == first
    assert "11 images (0 unreadable, 4 already there)" in capsys.readouterr().err

    csv_out = tmp_path / "out.csv"
    good = [r for r in records if "error" not in r][:3]
    listing = "\n".join(r["image"] for r in good) + "\n"
    monkeypatch.setattr(sys, "stdin", io.StringIO(listing))
    assert main(["predict", "-", "--weights", str(weights), "--topk", "2", *SMALL, "-o", str(csv_out)]) == 0
    rows = csv_out.read_text().splitlines()
    assert rows[0] == "image,label_1,index_1,probability_1,label_2,index_2,probability_2,error"
    assert [row.split(",")[0] for row in rows[1:]] == [r["image"] for r in good]
    assert [row.split(",")[1] for row in rows[1:]] == [r["predictions"][0]["label"] for r in good]

    listed = tmp_path / "list.txt"
    listed.write_text(listing)
    assert main(["predict", "--from-file", str(listed), "--weights", str(weights), *SMALL, "--json"]) == 0
    streamed = json.loads(capsys.readouterr().out)
    assert [r["image"] for r in streamed["results"]] == [r["image"] for r in good]
    assert streamed["arch"] == "vgg11" and streamed["topk"] == 5

    assert main(["predict", "--weights", str(weights)]) == 2
    assert "name the images" in capsys.readouterr().err
    assert main(["predict", str(data), "--resume"]) == 2
    assert "--resume, --overwrite and --format are for --output FILE" in capsys.readouterr().err


@pytest.mark.slow
def test_embed_command_writes_shards_and_an_index(seven_classes, tmp_path, capsys):
    import numpy as np

    from vggnet.batch.embed import read_embeddings

    weights, data = seven_classes
    out = tmp_path / "emb"
    argv = ["embed", str(data), "--weights", str(weights), *SMALL, "--out", str(out)]
    assert main([*argv, "--layer", "pool5", "--pool", "--normalize", "--shard-size", "5"]) == 1
    assert "zz-broken.png" in capsys.readouterr().err
    paths, rows = read_embeddings(out)
    assert rows.shape == (14, 512) and len(set(paths)) == 14 and np.allclose(np.linalg.norm(rows, axis=1), 1)
    assert sorted(p.name for p in out.glob("*.npy")) == [f"features-00000{i}.npy" for i in range(3)]
    assert main([*argv, "--layer", "pool5", "--pool", "--normalize", "--shard-size", "5", "--resume"]) == 0
    assert "0 images (0 unreadable, 15 already there)" in capsys.readouterr().err
    assert main([*argv, "--layer", "fc9", "--overwrite"]) == 2
    assert "--layer fc9: no such layer in vgg11; valid: conv1_1" in capsys.readouterr().err


@pytest.mark.slow
@pytest.mark.parametrize("command", ["predict", "evaluate", "embed"])
def test_commands_under_torchrun_match_one_process(seven_classes, tmp_path, command, capsys):
    import numpy as np

    from vggnet.batch.embed import read_embeddings

    weights, data = seven_classes
    common = ["--weights", str(weights), *SMALL]
    if command == "predict":
        one, two = tmp_path / "one.jsonl", tmp_path / "two.jsonl"
        extra = ["--topk", "3", "--output"]
        assert main([command, str(data), *common, *extra, str(one)]) == 1
    elif command == "embed":
        one, two = tmp_path / "one", tmp_path / "two"
        extra = ["--layer", "fc7", "--shard-size", "4", "--out"]
        assert main([command, str(data), *common, *extra, str(one)]) == 1
    else:
        one, two = tmp_path / "one.json", tmp_path / "two.json"
        assert main([command, str(data), *common, "--json"]) == 0
        one.write_text(capsys.readouterr().out)
        extra = []
    done = torchrun("-m", "vggnet", command, str(data), *common, *extra, *([str(two)] if extra else ["--json"]))
    assert done.returncode == (0 if command == "evaluate" else 1), done.stderr[-3000:]
    if command == "predict":
        a, b = ([json.loads(line) for line in p.read_text().splitlines()] for p in (one, two))
        assert [r["image"] for r in a] == [r["image"] for r in b]  # every image once, in the same order
        for x, y in zip(a, b):
            assert x.get("error", "") == y.get("error", "")
            assert [p["index"] for p in x.get("predictions", [])] == [p["index"] for p in y.get("predictions", [])]
            assert [p["probability"] for p in x.get("predictions", [])] == pytest.approx(
                [p["probability"] for p in y.get("predictions", [])], abs=1e-5
            )
        assert done.stderr.count("vggnet: cannot read the image") == 1  # by the rank that read it
        assert not list(tmp_path.glob("two.jsonl.part*"))
    elif command == "embed":
        (p1, r1), (p2, r2) = read_embeddings(one), read_embeddings(two)
        assert p1 == p2 and np.allclose(r1, r2, atol=1e-4)
    else:
        a, b = json.loads(one.read_text()), json.loads(done.stdout)  # rank 0 alone printed
        assert b["world_size"] == 2 and a["world_size"] == 1
        assert (b["images"], b["failed"], b["confusion"]) == (a["images"], a["failed"], a["confusion"])
        assert (b["acc1"], b["acc5"], b["per_class"]) == (a["acc1"], a["acc5"], a["per_class"])
        assert b["loss"] == pytest.approx(a["loss"], rel=1e-5)


# --- issue 24: outputs written as checkpoints are, bounds ------------------------------------------

NEVER = "http://127.0.0.1:9/never-0123abcd.pth"  # nothing listens there: a command that fetched it would fail


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (
            ["predict", str(PHOTOS), "--output", "{held}"],
            r"held.jsonl already holds 12 bytes; pass resume \(--resume\)",
        ),
        (["predict", str(PHOTOS), "--output", "{link}"], "link.jsonl: it is a symbolic link; vggnet never writes"),
        (["predict", str(PHOTOS), "--output", "{folder}"], "a-folder: it is a folder; name the file to write in it"),
        (["predict", str(PHOTOS), "--output", "{held}", "--resume", "--overwrite"], "pass one of them"),
        (["predict", str(PHOTOS), "--overwrite"], "--resume, --overwrite and --format are for --output FILE"),
        (["embed", str(PHOTOS), "--out", "{emb}"], r"emb already holds embeddings \(index.jsonl\); pass resume"),
        (["evaluate", "{folder}", "--plot", "{link_png}"], "link.png: it is a symbolic link"),
        (["explain", str(PHOTOS / "camera.png"), "--out", "{link_png}"], "link.png: it is a symbolic link"),
        (["features", str(PHOTOS / "camera.png"), "--out", "{folder_png}"], "folder.png: it is a folder"),
        (["predict", str(PHOTOS), "--workers", "100000"], r"--workers: an integer from 0 to \d+ \(4 per CPU core"),
    ],
)
def test_outputs_are_checked_before_any_weights_are_fetched(tmp_path, capsys, argv, message):
    held = tmp_path / "held.jsonl"
    held.write_text('{"image": 1}')
    (tmp_path / "victim.txt").write_text("precious")
    for name in ("link.jsonl", "link.png"):
        (tmp_path / name).symlink_to(tmp_path / "victim.txt")
    for name in ("a-folder", "folder.png"):
        (tmp_path / name).mkdir()
    (tmp_path / "emb").mkdir()
    (tmp_path / "emb" / "index.jsonl").write_text("")
    names = {"held": held, "link": tmp_path / "link.jsonl", "folder": tmp_path / "a-folder", "emb": tmp_path / "emb",
             "link_png": tmp_path / "link.png", "folder_png": tmp_path / "folder.png"}  # fmt: skip
    argv = [arg.format(**names) for arg in argv]
    assert main([*argv, "--weights", NEVER]) == 2
    err = capsys.readouterr().err  # argparse's errors come after its usage lines: one error line in any case
    assert re.search(message, err) and len(re.findall("error:", err)) == 1 and "never-0123abcd" not in err, err
    assert held.read_text() == '{"image": 1}' and (tmp_path / "victim.txt").read_text() == "precious"


@pytest.mark.slow
def test_predict_to_csv_and_jsonl_resumes_any_file_name(seven_classes, tmp_path, capsys):
    weights, _ = seven_classes
    folder = tmp_path / "odd"
    names = ["new\nline.png", 'quote".png', 'comma, and "both",\n.png', "cr\rreturn.png", "plain.png"]
    write_images(folder, names, size=(40, 40))
    for fmt in ("csv", "jsonl"):
        out = tmp_path / f"out.{fmt}"
        argv = ["predict", str(folder), "--weights", str(weights), *SMALL, "--topk", "2", "--output", str(out)]
        assert main(argv) == 0
        whole = out.read_bytes()
        lines = whole.split(b"\n")
        out.write_bytes(b"\n".join(lines[: len(lines) // 2]) + b"\n")  # a run killed halfway, maybe mid-record
        assert main([*argv, "--resume"]) == 0
        assert records(out) == records(whole), fmt  # each image once, in order, any name
        assert main(argv) == 2  # not replaced unasked
        assert main([*argv, "--overwrite"]) == 0 and records(out) == records(whole)
    capsys.readouterr()


def records(out: Path | bytes) -> list[tuple]:
    """(image, label, probability to 4 places) of each record of a CSV or JSONL output, read by the standard library.

    (A resumed run batches its images otherwise: the last digits of a probability may differ.)
    """
    import csv
    import io

    data = out.read_bytes() if isinstance(out, Path) else out
    text = data.decode("utf-8", "surrogateescape")
    if text.startswith("image,"):
        return [(r[0], r[1], round(float(r[3]), 4)) for r in list(csv.reader(io.StringIO(text, newline="")))[1:]]
    rows = [json.loads(line) for line in text.split("\n") if line]
    return [(r["image"], r["predictions"][0]["label"], round(r["predictions"][0]["probability"], 4)) for r in rows]


@pytest.mark.slow
def test_two_predict_resume_processes_never_duplicate_a_line(seven_classes, tmp_path):
    weights, data = seven_classes
    out = tmp_path / "out.jsonl"
    argv = [str(VENV_BIN / "vggnet"), "predict", str(data), "--weights", str(weights), *SMALL, "--output", str(out),
            "--resume", "--quiet"]  # fmt: skip
    procs = [subprocess.Popen(argv, stderr=subprocess.PIPE, text=True) for _ in range(2)]
    results = [(p.wait(timeout=300), p.stderr.read()) for p in procs]  # type: ignore[union-attr]
    for code, err in results:  # 1: an unreadable image was recorded, or the other process held the output
        assert code in (0, 1) and "Traceback" not in err, err
    refused = [err for _, err in results if "is being written by another vggnet process" in err]
    images = [json.loads(line)["image"] for line in out.read_text().splitlines()]
    assert len(images) == len(set(images)) == 15, (results, len(images))  # every image once, whoever wrote it
    assert len(refused) <= 1


# --- a checkpoint saved with vggnet.save, and the preset options (issue 25) ----------------------------

DIGITS = ["zero", "one", "two"]
OWN = ImageClassification(crop_size=32, resize_size=32, mean=[0.3, 0.3, 0.3], std=[0.2, 0.2, 0.2])
OWN_OPTIONS = ["--resize", "32", "--crop", "32", "--mean", "0.3", "0.3", "0.3", "--std", "0.2", "0.2", "0.2"]


@pytest.fixture(scope="module")
def own_loop(module_folders):
    """A gap-head model as a user's loop leaves it, saved by vggnet.save (classes, preset) and as a plain state
    dict, and a labelled folder of 40x48 images named after its classes."""
    from tests.helpers import write_images

    folder = module_folders.mktemp("own")
    torch.manual_seed(0)
    model = vggnet.vgg11_bn(head="gap", num_classes=3).eval()
    with torch.no_grad():
        model.classifier[0].weight.mul_(30)  # confident, different answers for noise images
    saved = vggnet.save(model, folder / "mine.safetensors", classes=DIGITS, preset=OWN)
    plain = folder / "mine-plain.pth"
    torch.save(model.state_dict(), plain)
    write_images(folder / "data", [f"{c}/{i}.png" for c in DIGITS for i in range(3)], seed=2)
    return model, saved, plain, folder / "data"


def test_predict_reads_a_saved_checkpoints_classes_and_preset(own_loop, capsys):
    model, saved, _, data = own_loop
    paths = sorted(data.glob("*/*.png"))
    with torch.inference_mode():
        probs = model(torch.stack([OWN(load_image(p)) for p in paths])).softmax(1)
    assert main(["predict", *map(str, paths), "--weights", str(saved), "--topk", "3", "--json", "--workers", "0"]) == 0
    captured = capsys.readouterr()
    results = json.loads(captured.out)["results"]
    assert "assuming" not in captured.err  # the file says what it expects
    for result, row in zip(results, probs):
        top = row.topk(3)
        assert [p["label"] for p in result["predictions"]] == [DIGITS[i] for i in top.indices.tolist()]
        assert [p["probability"] for p in result["predictions"]] == pytest.approx(top.values.tolist(), abs=1e-5)
    assert len({r["predictions"][0]["label"] for r in results}) > 1


def test_the_preset_options_are_checked_before_anything_is_loaded(own_loop, capsys):
    _, saved, _, data = own_loop
    argv = ["evaluate", str(data), "--weights", str(saved)]
    assert main([*argv, "--image-size", "64", "--crop", "32"]) == 2
    assert "give either it or --resize/--crop" in capsys.readouterr().err
    assert main([*argv, "--resize", "32", "--crop", "64"]) == 2
    assert "--crop 64 is larger than --resize 32" in capsys.readouterr().err
    assert main([*argv, "--mean", "0.5", "0.5"]) == 2
    assert "--mean takes 3 value(s), one per input channel of the model; got 2" in capsys.readouterr().err


@pytest.mark.slow
def test_evaluate_with_a_saved_checkpoint_scores_with_its_classes_and_preset(own_loop, capsys):
    from vggnet.batch.evaluate import evaluate

    model, saved, plain, data = own_loop
    want = evaluate(model, OWN, data, classes=DIGITS, workers=0, progress=False)
    assert main(["evaluate", str(data), "--weights", str(saved), "--json", "--workers", "0"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["layout"] == "classes" and report["confusion"] == want.confusion.tolist()
    assert report["acc1"] == want.acc1 and report["per_class"] == want.per_class

    # the same model as a plain state dict: ImageNet's preset assumed and said once; the options stand in for it
    assert main(["evaluate", str(data), "--weights", str(plain), "--json", "--workers", "0"]) == 0
    captured = capsys.readouterr()
    assert json.loads(captured.out)["confusion"] != want.confusion.tolist()
    warned = [line for line in captured.err.splitlines() if "is a plain state dict: assuming ImageNet's" in line]
    assert len(warned) == 1 and "--resize, --crop, --mean and --std" in warned[0]
    assert main(["evaluate", str(data), "--weights", str(plain), "--json", "--workers", "0", *OWN_OPTIONS]) == 0
    captured = capsys.readouterr()
    unnamed = evaluate(model, OWN, data, workers=0, progress=False)  # no class names: folders in sorted order
    assert json.loads(captured.out)["confusion"] == unnamed.confusion.tolist()
    assert "assuming" not in captured.err  # said once per file and process


@pytest.mark.slow
def test_embed_reads_a_saved_checkpoints_preset(tmp_path, capsys):
    from tests.helpers import write_images
    from vggnet.batch.embed import read_embeddings

    torch.manual_seed(1)
    model = vggnet.vgg11(num_classes=2).eval()
    saved = vggnet.save(model, tmp_path / "m.pth", classes=["a", "b"], preset=OWN)
    paths = write_images(tmp_path / "images", ["x.png", "y.png"], seed=3)
    out = tmp_path / "emb"
    argv = ["embed", *map(str, paths), "--weights", str(saved), "--layer", "fc7", "--out", str(out), "--workers", "0"]
    assert main(argv) == 0
    _, rows = read_embeddings(out)
    with torch.inference_mode():
        want = model.extract(torch.stack([OWN(load_image(p)) for p in paths]), "fc7")["fc7"]
    torch.testing.assert_close(torch.from_numpy(rows), want, atol=1e-4, rtol=1e-4)


@pytest.mark.slow
def test_explain_and_features_take_the_preset_options(seeded_vgg11, tmp_path, capsys):
    pytest.importorskip("captum")
    Image = pytest.importorskip("PIL.Image")
    photo = str(PHOTOS / "coffee.jpg")
    common = ["--weights", str(seeded_vgg11), "--device", "cpu", "--resize", "64", "--crop", "64", "--json"]
    assert main(["features", photo, *common, "--layer", "conv1_1", "--out", str(tmp_path / "f.png")]) == 0
    assert json.loads(capsys.readouterr().out)["map_size"] == [64, 64]  # conv1_1 keeps the 64 px crop
    assert main(["explain", photo, *common, "--out", str(tmp_path / "e.png")]) == 0
    with Image.open(tmp_path / "e.png") as picture:
        assert picture.size == (64, 64)  # drawn over the image as the model saw it
