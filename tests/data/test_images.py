"""Listing inputs, labelled folders (ImageFolder and ImageNet's synset layout), decoding that reports bad files."""

import io
from importlib import resources
from pathlib import Path

import pytest
import torch

from tests.helpers import write_corrupt, write_images, write_set
from vggnet.data.images import ImageFiles, ImageFolder, collate, imagenet_synsets, labelled_images, list_images, shard
from vggnet.data.transforms import ImageClassification
from vggnet.errors import NoImages
from vggnet.models.weights import IMAGENET_CATEGORIES

Image = pytest.importorskip("PIL.Image")


def test_the_synset_list_matches_the_category_list():
    synsets = imagenet_synsets()
    names = resources.files("vggnet").joinpath("data/imagenet_synsets.txt").read_text().splitlines()
    assert len(synsets) == len(set(synsets)) == len(names) == 1000
    assert len(IMAGENET_CATEGORIES) == len(set(IMAGENET_CATEGORIES)) == 1000
    assert synsets[0] == "n01440764" and IMAGENET_CATEGORIES[0] == "tench"
    assert synsets[999] == "n15075141" and IMAGENET_CATEGORIES[999] == "toilet tissue"
    assert all(len(s) == 9 and s[0] == "n" and s[1:].isdigit() for s in synsets)


def test_list_images_expands_folders_globs_lists_and_stdin(tmp_path):
    a = write_images(tmp_path / "photos", ["b.jpg", "a.png", "sub/deeper/c.JPG"])
    (tmp_path / "photos" / "notes.txt").write_text("not an image")
    (tmp_path / "photos" / ".hidden.jpg").write_bytes(b"")
    folder = sorted(str(p) for p in a)
    assert list_images([tmp_path / "photos"]) == folder  # recursive, sorted, images only
    assert list_images([str(tmp_path / "photos" / "**" / "*.JPG")]) == [str(a[2])]
    listing = tmp_path / "list.txt"
    listing.write_text(f"# my images\n{a[1]}\n\n{a[0]}\n{a[1]}\n")
    assert list_images(from_file=listing) == [str(a[1]), str(a[0])]  # order kept, each once
    stdin = io.StringIO(f"{a[2]}\n{a[0]}\n")
    assert list_images([str(a[0]), "-"], stdin=stdin) == [str(a[0]), str(a[2])]
    with pytest.raises(FileNotFoundError, match="no such image file, folder or glob pattern"):
        list_images([str(tmp_path / "missing.jpg")])
    with pytest.raises(FileNotFoundError, match="no files match"):
        list_images([str(tmp_path / "*.gif")])
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match=r"no images .* in the folder"):
        list_images([tmp_path / "empty"])
    with pytest.raises(FileNotFoundError, match="--from-file"):
        list_images(from_file=tmp_path / "nope.txt")
    with pytest.raises(NoImages, match="no images named"):
        list_images([])


def test_labelled_images_sorted_named_and_imagenet_layouts(tmp_path):
    write_images(tmp_path / "plain", ["dog/1.jpg", "cat/1.png", "cat/2/deep.png"])
    sorted_layout = labelled_images(tmp_path / "plain")
    assert sorted_layout.classes == ["cat", "dog"] and sorted_layout.layout == "sorted"
    assert [Path(p).parent.name for p in sorted_layout.paths] == ["cat", "2", "dog"]
    assert sorted_layout.targets == [0, 0, 1]

    named = labelled_images(tmp_path / "plain", classes=["zebra", "dog", "cat"])  # a fine-tuned model's order
    assert named.targets == [2, 2, 1] and named.classes == ["zebra", "dog", "cat"] and named.layout == "classes"

    write_images(tmp_path / "val", ["n01443537/x.JPEG", "n01440764/y.JPEG", "n15075141/z.png"])
    imagenet = labelled_images(tmp_path / "val", classes=IMAGENET_CATEGORIES, num_classes=1000)
    assert imagenet.layout == "imagenet" and len(imagenet.classes) == 1000
    assert imagenet.targets == [0, 1, 999]  # n01440764 = tench = 0, goldfish = 1, toilet tissue = 999
    assert imagenet.classes[imagenet.targets[0]] == "tench"
    # synset folders with a 3-class model are just three classes
    assert labelled_images(tmp_path / "val", num_classes=3).targets == [0, 1, 2]

    with pytest.raises(ValueError, match=r"has 2 class folders .* but the model has 5 outputs"):
        labelled_images(tmp_path / "plain", num_classes=5)
    with pytest.raises(FileNotFoundError, match="no such folder"):
        labelled_images(tmp_path / "absent")


# --- ImageFolder: the labelled training folder finetune reads --------------------------------------


@pytest.fixture(scope="module")
def data(module_folders):
    root = module_folders.mktemp("colours")
    write_set(root, {"train": 8, "val": 4})
    return root


def test_image_folder_reads_the_layout(data, tmp_path):
    folder = ImageFolder(data / "train", ImageClassification(crop_size=32, resize_size=36))
    assert folder.classes == ["blue", "red"] and len(folder) == 16
    x, y = folder[0]
    assert x.shape == (3, 32, 32) and y == 0 and folder[len(folder) - 1][1] == 1
    gray = ImageFolder(data / "train", ImageClassification(crop_size=32, mean=(0.45,), std=(0.22,)), gray=True)
    assert gray[0][0].shape == (1, 32, 32)
    (tmp_path / "val" / "green").mkdir(parents=True)
    (tmp_path / "val" / "blue").mkdir()
    with pytest.raises(ValueError, match=r"class folders \['blue', 'green'\], expected \['blue', 'red'\]"):
        ImageFolder(tmp_path / "val", folder.transform, classes=folder.classes)
    with pytest.raises(ValueError, match=r"no images .* for the classes \['blue', 'green'\]"):
        ImageFolder(tmp_path / "val", folder.transform)
    with pytest.raises(FileNotFoundError, match="no such folder"):
        ImageFolder(tmp_path / "nothing", folder.transform)


def test_image_folder_split_is_stratified_and_seeded(tmp_path):
    write_set(tmp_path / "d", {"train": 10})
    folder = ImageFolder(tmp_path / "d" / "train")
    rest, held = folder.split(0.2, seed=3)
    assert sorted(held.targets()) == [0, 0, 1, 1] and len(rest) == 16 and not set(rest.samples) & set(held.samples)
    assert held.samples == folder.split(0.2, seed=3)[1].samples != folder.split(0.2, seed=4)[1].samples


def test_image_files_report_unreadable_files_and_collate_keeps_them_apart(tmp_path):
    good = write_images(tmp_path, ["a.jpg", "b.png"])
    bad = [write_corrupt(tmp_path / "c.jpg"), write_corrupt(tmp_path / "d.jpg", "truncated")]
    paths = [str(good[0]), str(bad[0]), str(good[1]), str(bad[1])]
    files = ImageFiles(paths, ImageClassification(crop_size=32, resize_size=36))
    items = [files[i] for i in range(len(files))]
    assert [i for i, _ in items] == [0, 1, 2, 3]
    assert isinstance(items[0][1], torch.Tensor) and items[0][1].shape == (3, 32, 32)
    assert "not an image Pillow can identify" in items[1][1]  # BadImageError.problem: the path is said elsewhere
    assert isinstance(items[3][1], str) and items[3][1]
    batch = collate(items)
    assert batch.indices == [0, 2] and batch.images.shape == (2, 3, 32, 32)
    assert [i for i, _ in batch.errors] == [1, 3]
    assert collate([items[1]]).images is None


@pytest.mark.parametrize("n, world", [(10, 3), (7, 2), (1, 4), (0, 2)])
def test_shards_cover_every_item_once(n, world):
    shares = [list(shard(n, rank, world)) for rank in range(world)]
    assert sorted(i for share in shares for i in share) == list(range(n))
