"""predict_images and iter_predictions: every image once, as computed by hand, bad files recorded, flat memory."""

import csv
import tracemalloc

import pytest

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
    write_images,
)
from vggnet.batch.engine import Session
from vggnet.batch.predict import iter_predictions, predict_images


@pytest.mark.parametrize("workers", [0, 2])
@pytest.mark.slow
def test_predict_a_folder_to_jsonl_with_bad_files(photos, tmp_path, workers, caplog):
    model = small_model()
    out = tmp_path / "out.jsonl"
    summary = predict_images(
        model, PRESET, [photos], out, categories=CLASSES, topk=3, batch_size=5, workers=workers, progress=False
    )
    assert (summary.images, summary.failed, summary.skipped, summary.world_size) == (18, 2, 0, 1)
    records = read_jsonl(out)
    assert [r["image"] for r in records] == vggnet.data.images.list_images([photos])  # in the listing's order
    check_results(records, by_hand(model, readable(photos)), bad_paths(photos))
    assert sum("cannot read the image" in m and "broken.jpg" in m for m in caplog.messages) == 1


@pytest.mark.slow
def test_predict_to_csv(photos, tmp_path):
    model = small_model()
    out = tmp_path / "out.csv"
    predict_images(model, PRESET, [photos], out, categories=CLASSES, topk=2, format="csv", workers=0, progress=False)
    rows = list(csv.DictReader(out.open()))
    assert list(rows[0]) == [
        "image",
        "label_1",
        "index_1",
        "probability_1",
        "label_2",
        "index_2",
        "probability_2",
        "error",
    ]
    expected = by_hand(model, readable(photos), k=2)
    assert len(rows) == 18
    for row in rows:
        if row["image"] in bad_paths(photos):
            assert row["error"] and row["label_1"] == ""
            continue
        want = expected[row["image"]]
        assert [int(row["index_1"]), int(row["index_2"])] == [i for i, _ in want]
        assert [row["label_1"], row["label_2"]] == [CLASSES[i] for i, _ in want]
        assert [float(row["probability_1"]), float(row["probability_2"])] == pytest.approx(
            [v for _, v in want], rel=1e-4
        )
    with pytest.raises(ValueError, match="format must be one of jsonl, csv"):
        predict_images(model, PRESET, [photos], out, categories=CLASSES, format="xml", progress=False)


@pytest.mark.slow
def test_iter_predictions_holds_no_results(tmp_path):
    """Python memory after 1000 images is what it was after 200: nothing grows with the number of images."""
    folder = tmp_path / "many"
    write_images(folder, [f"{i:04d}.png" for i in range(1000)], size=(32, 32))
    paths = vggnet.data.images.list_images([folder])
    model = small_model()
    session = Session("cpu", batch_size=50, workers=0)
    tracemalloc.start()
    try:
        for n, _ in enumerate(iter_predictions(model, PRESET, paths, CLASSES, session, topk=3, optimize=False), 1):
            if n == 200:
                early = tracemalloc.get_traced_memory()[0]
        late = tracemalloc.get_traced_memory()[0]
    finally:
        tracemalloc.stop()
    assert n == 1000
    assert late - early < 64 * 1024, (early, late)  # holding 800 records would be about 1 MB
