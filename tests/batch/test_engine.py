"""The engine (vggnet.batch.engine): resumable outputs, a killed run, torchrun with 2 processes."""

import json
import os
import signal
import subprocess
import sys
import textwrap
import time

import numpy as np
import pytest
import torch

import vggnet
from tests.helpers import (
    CLASSES,
    PRESET,
    bad_paths,
    by_hand,
    check_results,
    read_jsonl,
    readable,
    small_model,
    torchrun,
    write_images,
    write_labelled,
)
from vggnet.batch.embed import embed_images, read_embeddings
from vggnet.batch.predict import predict_images

pytest.importorskip("PIL.Image")


@pytest.mark.slow
def test_resume_after_a_truncated_output_runs_only_what_is_missing(photos, tmp_path):
    model = small_model()
    full = tmp_path / "full.jsonl"
    predict_images(model, PRESET, [photos], full, categories=CLASSES, topk=3, workers=0, progress=False)
    lines = full.read_text().splitlines(keepends=True)
    out = tmp_path / "out.jsonl"
    out.write_text("".join(lines[:6]) + lines[6][: len(lines[6]) // 2])  # a run killed in the middle of line 7
    summary = predict_images(
        model, PRESET, [photos], out, categories=CLASSES, topk=3, workers=0, resume=True, progress=False
    )
    assert (summary.images, summary.skipped) == (12, 6)
    assert out.read_text() == full.read_text()  # each image once, in order
    again = predict_images(model, PRESET, [photos], out, categories=CLASSES, resume=True, progress=False)
    assert (again.images, again.skipped) == (0, 18) and out.read_text() == full.read_text()

    csv_out = tmp_path / "out.csv"
    predict_images(model, PRESET, [photos], csv_out, categories=CLASSES, topk=3, format="csv", progress=False)
    with pytest.raises(ValueError, match=r"has the columns .*another --topk"):
        predict_images(
            model, PRESET, [photos], csv_out, categories=CLASSES, topk=2, format="csv", resume=True, progress=False
        )
    (tmp_path / "other.jsonl").write_text('{"no": "image"}\n')
    with pytest.raises(ValueError, match="line 1: not a jsonl record of this command"):
        predict_images(
            model, PRESET, [photos], tmp_path / "other.jsonl", categories=CLASSES, resume=True, progress=False
        )


KILLED_SCRIPT = textwrap.dedent(
    """
    import sys, torch, vggnet
    from vggnet.batch.predict import predict_images
    from vggnet.data.transforms import ImageClassification
    torch.manual_seed(0)
    model = vggnet.vgg11(num_classes=7)
    with torch.no_grad():
        model.classifier[6].weight.mul_(300)
    predict_images(model, ImageClassification(crop_size=32, resize_size=36), [sys.argv[1]], sys.argv[2],
                   categories=list("abcdefg"), topk=3, batch_size=1, workers=0, progress=False,
                   resume=sys.argv[3:] == ["--resume"])
    """
)


@pytest.mark.slow
def test_resume_after_a_killed_process(tmp_path):
    folder = tmp_path / "many"
    write_images(folder, [f"{i:03d}.png" for i in range(60)], size=(32, 32))
    script, out = tmp_path / "predict.py", tmp_path / "out.jsonl"
    script.write_text(KILLED_SCRIPT)
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen([sys.executable, str(script), str(folder), str(out)], env=env)
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and (not out.exists() or out.read_text().count("\n") < 5):
        time.sleep(0.05)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    held = out.read_text().count("\n")
    assert 5 <= held < 60, held  # killed in the middle
    kept = out.read_text()
    kept = kept[: kept.rfind("\n") + 1]
    subprocess.run([sys.executable, str(script), str(folder), str(out), "--resume"], env=env, check=True, timeout=300)
    fresh = tmp_path / "fresh.jsonl"
    subprocess.run([sys.executable, str(script), str(folder), str(fresh)], env=env, check=True, timeout=300)
    assert out.read_text().startswith(kept)  # the killed run's lines were kept, not computed again
    assert out.read_text() == fresh.read_text()  # and the rest added: each image once, in order


TORCHRUN_SCRIPT = textwrap.dedent(
    """
    import json, sys
    import torch, vggnet
    from vggnet.batch.embed import embed_images
    from vggnet.batch.predict import predict_images
    from vggnet.batch.evaluate import evaluate
    from vggnet.data.transforms import ImageClassification
    photos, labelled, weights, out = sys.argv[1:]
    model = vggnet.vgg11(num_classes=7)
    model.load_state_dict(torch.load(weights, weights_only=True))
    preset = ImageClassification(crop_size=32, resize_size=36)
    classes = ["ant", "bee", "cat", "dog", "eel", "fox", "gnu"]
    p = predict_images(model, preset, [photos], out + "/pred.jsonl", categories=classes, topk=3, batch_size=3,
                       workers=1, progress=False)
    e = embed_images(model, preset, [photos], out + "/emb", layer="fc7", shard_size=4, batch_size=3, workers=0,
                     progress=False)
    r = evaluate(model, preset, labelled, batch_size=3, workers=0, progress=False)
    rank = torch.distributed.get_rank()
    with open(f"{out}/rank{rank}.json", "w") as f:
        json.dump({"predict": p.to_dict(), "embed": e.to_dict(), "evaluate": r.to_dict(confusion=True)}, f)
    torch.distributed.destroy_process_group()
    """
)


@pytest.mark.slow
def test_torchrun_two_processes_match_one(photos, tmp_path):
    from vggnet.batch.evaluate import evaluate

    labelled = write_labelled(tmp_path / "labelled", CLASSES, per_class=3)
    model = small_model()
    weights = tmp_path / "w.pth"
    torch.save(model.state_dict(), weights)
    script, out = tmp_path / "run.py", tmp_path / "out"
    script.write_text(TORCHRUN_SCRIPT)
    out.mkdir()
    done = torchrun(str(script), str(photos), str(labelled), str(weights), str(out))
    assert done.returncode == 0, done.stderr[-3000:]
    ranks = [json.loads((out / f"rank{r}.json").read_text()) for r in (0, 1)]
    assert ranks[0] == ranks[1]  # every rank returns the merged figures

    # predict: every image once, in the listing's order, the same results as one process
    records = read_jsonl(out / "pred.jsonl")
    assert [r["image"] for r in records] == vggnet.data.images.list_images([photos])
    check_results(records, by_hand(model, readable(photos)), bad_paths(photos))
    assert not list(out.glob("pred.jsonl.part*"))
    assert ranks[0]["predict"]["images"] == 18 and ranks[0]["predict"]["failed"] == 2
    assert ranks[0]["predict"]["world_size"] == 2

    # embed: each image's row as one process computes it
    paths, rows = read_embeddings(out / "emb")
    single = tmp_path / "single"
    embed_images(model, PRESET, [photos], single, layer="fc7", shard_size=4, workers=0, progress=False)
    paths1, rows1 = read_embeddings(single)
    assert paths == paths1
    np.testing.assert_allclose(rows, rows1, atol=1e-4)
    assert [r["image"] for r in read_jsonl(out / "emb" / "index.jsonl")] == vggnet.data.images.list_images([photos])

    # evaluate: the same counts, summed over the ranks, no image twice
    one = evaluate(model, PRESET, labelled, workers=0, progress=False).to_dict(confusion=True)
    for rank in ranks:
        two = rank["evaluate"]
        assert two["images"] == one["images"] == 21 and two["failed"] == one["failed"] == 1
        assert two["confusion"] == one["confusion"]
        assert (two["acc1"], two["acc5"], two["per_class"]) == (one["acc1"], one["acc5"], one["per_class"])
        assert two["loss"] == pytest.approx(one["loss"], rel=1e-5)


def test_a_session_takes_a_few_workers_per_core_not_a_hundred_thousand():
    from vggnet.batch.engine import Session
    from vggnet.checks import max_workers

    assert Session("cpu", 4, max_workers()).workers == max_workers()
    with pytest.raises(ValueError, match=r"workers must be an integer from 0 to \d+ \(4 per CPU core"):
        Session("cpu", 4, 100000)


def test_batch_logits_stay_float32_on_cpu_where_optimize_for_inference_would_pick_bf16(monkeypatch):
    from vggnet.batch.engine import Session, logits_fn
    from vggnet.deploy import inference

    monkeypatch.setattr(inference, "cpu_has_native_bf16", lambda: True)
    torch.manual_seed(0)
    model = vggnet.vgg11(num_classes=10).eval()
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        expected = model(x)
    got = logits_fn(model, Session(device="cpu", batch_size=2, workers=0))(x)
    torch.testing.assert_close(got, expected, rtol=1e-4, atol=1e-5 * expected.abs().max().item())
