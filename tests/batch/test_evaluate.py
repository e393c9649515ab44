"""evaluate: accuracy figures checked against a hand computation, the confusion PNG, ImageNet's layout."""

from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from tests.helpers import CLASSES, PRESET, small_model, write_images, write_labelled
from vggnet.batch.evaluate import evaluate, plot_confusion
from vggnet.data.decode import load_image

Image = pytest.importorskip("PIL.Image")


def hand_figures(model, root: Path, classes: list[str]):
    """acc@1, acc@5, mean loss, confusion: image by image with the eager model."""
    n = model.num_classes
    images = [(p, t) for t, name in enumerate(classes) for p in sorted((root / name).iterdir()) if "zz-" not in p.name]
    with torch.inference_mode():
        all_logits = model(torch.stack([PRESET(load_image(p)) for p, _ in images]))
    confusion = np.zeros((n, n), dtype=np.int64)
    top5 = losses = 0.0
    for logits, (_, target) in zip(all_logits, images):
        confusion[target, int(logits.argmax())] += 1
        top5 += target in logits.topk(min(5, n)).indices.tolist()
        losses += float(F.cross_entropy(logits[None], torch.tensor([target])))
    count = len(images)
    return confusion.trace() / count, top5 / count, losses / count, confusion, count


@pytest.fixture(scope="module")
def labelled(module_folders):
    return write_labelled(module_folders.mktemp("labelled"), CLASSES)


@pytest.mark.parametrize("optimize", [True, False])
@pytest.mark.slow
def test_evaluate_matches_a_hand_computation(labelled, optimize, caplog):
    model = small_model()
    result = evaluate(model, PRESET, labelled, batch_size=4, workers=0, optimize=optimize, progress=False)
    acc1, acc5, loss, confusion, count = hand_figures(model, labelled, CLASSES)
    assert (
        (result.images, result.failed, result.world_size, result.layout)
        == (count, 1, 1, "sorted")
        == (21, 1, 1, "sorted")
    )
    assert result.confusion.tolist() == confusion.tolist()
    assert result.acc1 == pytest.approx(acc1) and result.acc5 == pytest.approx(acc5)
    assert 0 < result.acc5 < 1 and result.acc1 < result.acc5  # 7 classes: acc@5 says something
    assert result.loss == pytest.approx(loss, rel=1e-4)
    assert result.per_class == {c: confusion[i, i] / confusion[i].sum() for i, c in enumerate(CLASSES)}
    assert result.images_per_s > 0 and result.classes == CLASSES
    assert any("zz-broken.png" in m for m in caplog.messages)
    data = result.to_dict()
    assert "confusion" not in data and result.to_dict(confusion=True)["confusion"] == confusion.tolist()


@pytest.mark.slow
def test_evaluate_with_a_checkpoints_class_names_and_wrong_sizes(labelled, tmp_path):
    model = small_model()
    shuffled = CLASSES[::-1]  # a fine-tuned model's own order: folder "ant" is its class 6
    result = evaluate(model, PRESET, labelled, classes=shuffled, workers=0, progress=False)
    assert result.layout == "classes" and result.classes == shuffled
    acc1, *_ = hand_figures(model, labelled, shuffled)
    assert result.acc1 == pytest.approx(acc1)
    with pytest.raises(ValueError, match=r"has 7 class folders .* the model has 3 outputs"):
        evaluate(small_model(3), PRESET, labelled, workers=0, progress=False)


@pytest.mark.slow
def test_evaluate_on_the_imagenet_layout(tmp_path):
    root = tmp_path / "val"
    write_images(root, ["n01443537/a.JPEG", "n01440764/b.JPEG", "n01440764/c.png"])
    model = small_model(1000)
    result = evaluate(model, PRESET, root, workers=0, progress=False)
    assert result.layout == "imagenet" and result.images == 3 and result.confusion.shape == (1000, 1000)
    rows = result.confusion.sum(1)
    assert rows[0] == 2 and rows[1] == 1 and rows.sum() == 3  # tench (n01440764) is 0, goldfish 1
    assert set(result.per_class) == {"n01440764", "n01443537"}
    from vggnet.models.weights import IMAGENET_CATEGORIES

    named = evaluate(model, PRESET, root, classes=IMAGENET_CATEGORIES, workers=0, progress=False)
    assert set(named.per_class) == {"tench", "goldfish"} and named.confusion.tolist() == result.confusion.tolist()


@pytest.mark.slow
def test_confusion_png(labelled, tmp_path):
    result = evaluate(small_model(), PRESET, labelled, workers=0, progress=False)
    path = plot_confusion(result, tmp_path / "confusion.png", cell=10, labels=False)
    with Image.open(path) as img:
        assert img.format == "PNG"
        pixels = np.asarray(img.convert("RGB")).astype(int)
    share = (result.confusion.double() / result.confusion.sum(1, keepdim=True)).numpy()
    white, blue = np.array([255, 255, 255]), np.array([8, 48, 107])
    top, left = 24, 8  # below the title line, after the margin
    for i in range(len(CLASSES)):
        for j in range(len(CLASSES)):
            centre = pixels[top + 10 * i + 5, left + 10 * j + 5]
            assert np.abs(centre - (white + share[i, j] * (blue - white))).max() <= 1, (i, j)
    assert share.max() == 1 or share.max() > 0.3  # some cell is shaded
    assert (pixels[:top] < 100).any()  # the title is drawn

    named = plot_confusion(result, tmp_path / "named.png")
    with Image.open(named) as img:
        assert img.width > 7 * 10 + 16 and img.height > 7 * 10 + 24  # room for the class names
