"""Checkpoint records: every field against the reference table and torchvision's metadata."""

import dataclasses
from pathlib import Path

import pytest

import vggnet
import vggnet.config as config
import vggnet.weights as weights
from vggnet.weights import OFFICIAL_BASE, WEIGHTS_ENUMS, Weights, get_weight, resolve_weights

from .reference import ARCHS, FEATURES, FULL_DIGESTS, RECORDS, SIZES

tvm = pytest.importorskip("torchvision.models")
CATEGORIES = (Path(__file__).parents[1] / "vggnet/data/imagenet_categories.txt").read_text().splitlines()


@pytest.mark.parametrize("arch", ARCHS)
def test_imagenet_record_fields(arch):
    file, prefix, num_params, acc1, acc5, gflops, mib = RECORDS[arch]
    enum = vggnet.get_model_weights(arch)
    record = enum.IMAGENET1K_V1.value
    assert enum.DEFAULT is enum.IMAGENET1K_V1
    assert record.url == OFFICIAL_BASE + file and record.file_name == file and record.is_official
    assert record.sha256 == FULL_DIGESTS.get(arch, prefix) and record.sha256.startswith(prefix)
    assert record.size == SIZES.get(arch)
    if record.size is not None:  # the exact size agrees with the MiB figure
        assert round(record.size / 2**20, 3) == mib
    assert (record.num_params, record.gflops, record.file_size) == (num_params, gflops, mib)
    assert dict(record.metrics) == {"acc@1": acc1, "acc@5": acc5}
    assert list(record.categories) == CATEGORIES
    assert (record.crop_size, record.resize_size, record.interpolation) == (224, 256, "bilinear")
    assert record.mean == (0.485, 0.456, 0.406) and record.std == (0.229, 0.224, 0.225)
    assert record.min_size == (32, 32)


def test_categories_are_the_thousand_unique_names():
    categories = vggnet.VGG16_Weights.DEFAULT.meta["categories"]
    assert len(categories) == 1000 == len(set(categories))
    assert categories[0] == "tench" and categories[999] == "toilet tissue"


def test_vgg16_features_record():
    file, prefix, num_params, gflops, mib = FEATURES
    record = vggnet.VGG16_Weights.IMAGENET1K_FEATURES.value
    assert record.file_name == file and record.sha256 == prefix
    assert (record.num_params, record.gflops, record.file_size) == (num_params, gflops, mib)
    assert record.categories is None and record.meta["categories"] is None
    assert all(v != v for v in record.metrics.values())  # NaN, as torchvision: no classifier to measure
    assert record.mean == (0.48235, 0.45882, 0.40784)
    assert record.std == pytest.approx((1 / 255,) * 3)
    assert vggnet.VGG16_Weights.DEFAULT is vggnet.VGG16_Weights.IMAGENET1K_V1


@pytest.mark.parametrize("arch", ARCHS)
def test_meta_equals_torchvisions(arch):
    ours = vggnet.get_model_weights(arch)
    theirs = tvm.get_model_weights(arch)
    assert list(ours.__members__) == list(theirs.__members__)
    for name in theirs.__members__:
        mine, ref = ours[name], theirs[name]
        assert mine.url == ref.url
        ours_meta, ref_meta = mine.meta, dict(ref.meta)
        assert ours_meta.pop("_docs") == " ".join(ref_meta.pop("_docs").split())
        if name == "IMAGENET1K_FEATURES":  # NaN != NaN: compare the metrics by their repr
            assert repr(ours_meta.pop("_metrics")) == repr(ref_meta.pop("_metrics"))
        assert ours_meta == ref_meta
        assert str(mine) == str(ref)


def test_presets_equal_torchvisions_settings():
    for name in ("IMAGENET1K_V1", "IMAGENET1K_FEATURES"):
        ours = vggnet.VGG16_Weights[name].transforms()
        theirs = tvm.VGG16_Weights[name].transforms()
        assert ours.crop_size == theirs.crop_size[0] and ours.resize_size == theirs.resize_size[0]
        assert ours.mean == pytest.approx(theirs.mean, abs=0) and ours.std == pytest.approx(theirs.std, abs=0)


@pytest.mark.parametrize("name", ["DEFAULT", "IMAGENET1K_V1", "VGG16_Weights.IMAGENET1K_V1", "VGG16_Weights.DEFAULT"])
def test_string_lookups(name):
    assert resolve_weights("vgg16", name) is vggnet.VGG16_Weights.IMAGENET1K_V1.value


def test_lookups_by_member_record_and_registry():
    member = vggnet.VGG19_BN_Weights.DEFAULT
    assert resolve_weights("vgg19_bn", member) is member.value
    custom = Weights(url="https://example.org/x-0123abcd.pth", sha256="0123ABCD")
    assert resolve_weights("vgg19_bn", custom) is custom and custom.sha256 == "0123abcd"
    assert resolve_weights("vgg19_bn", None) is None
    assert get_weight("VGG16_Weights.IMAGENET1K_FEATURES") is vggnet.VGG16_Weights.IMAGENET1K_FEATURES
    assert vggnet.get_model_weights(vggnet.vgg13) is vggnet.VGG13_Weights
    assert set(WEIGHTS_ENUMS) == set(vggnet.list_models()) == set(ARCHS)


def test_unknown_names_list_the_valid_ones():
    with pytest.raises(ValueError, match=r"unknown weights 'IMAGENET1K_V2' .*VGG16_Weights.IMAGENET1K_FEATURES"):
        resolve_weights("vgg16", "IMAGENET1K_V2")
    with pytest.raises(ValueError, match=r"not weights for vgg11; valid: VGG11_Weights.IMAGENET1K_V1"):
        resolve_weights("vgg11", vggnet.VGG16_Weights.DEFAULT)
    with pytest.raises(ValueError, match=r"valid: .*VGG19_BN_Weights.IMAGENET1K_V1"):
        get_weight("VGG17_Weights.DEFAULT")
    with pytest.raises(ValueError, match=r"unknown model 'vgg17'; valid: vgg11, vgg11_bn"):
        vggnet.get_model("vgg17")
    with pytest.raises(TypeError, match="weights must be None, a string"):
        resolve_weights("vgg16", 3)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"sha256": "xyz"}, "64 hex digits"),
        ({"sha256": "abc"}, "at least its first 8"),
        ({"sha256": "0" * 65}, "64 hex digits"),
        ({"size": 0}, "positive byte count"),
        ({"interpolation": "lanczos"}, "nearest, bilinear, bicubic"),
        ({"mean": (0.5,), "std": (0.5, 0.5)}, "one value per channel"),
        ({"url": ""}, "https, http or file://"),
    ],
)
def test_bad_records_are_refused(kwargs, message):
    fields = {"url": "https://example.org/w.pth", "sha256": "0" * 64, **kwargs}
    with pytest.raises(ValueError, match=message):
        Weights(**fields)


def test_records_are_frozen_and_hashable():
    record = vggnet.VGG11_Weights.DEFAULT.value
    with pytest.raises(dataclasses.FrozenInstanceError):
        record.url = "x"  # type: ignore[misc]
    assert {record: 1}[record] == 1
    with pytest.raises(TypeError):
        record.metrics["acc@1"] = 0  # type: ignore[index]
    own = Weights(url="/data/mine.pth", sha256="a" * 64, categories=["cat", "dog"], metrics={"acc@1": 90.0})
    assert own.meta["categories"] == ["cat", "dog"] and own.meta["_metrics"] == {"ImageNet-1K": {"acc@1": 90.0}}
    assert not own.is_official and own.file_name == "mine.pth"


@pytest.mark.parametrize(
    "url", ["https://example.org/a%2F..%2Fb.pth", "https://example.org/..", "https://example.org/"]
)
def test_a_record_whose_url_names_no_plain_file_is_refused_where_the_name_is_used(url):
    record = Weights(url=url, sha256="0" * 64)
    with pytest.raises(ValueError):
        record.file_name  # noqa: B018 - the property is what is tested
    assert (
        Weights(url="https://example.org/x/my%20vgg-0123abcd.pth", sha256="0123abcd").file_name == "my vgg-0123abcd.pth"
    )


@pytest.mark.parametrize("arch", ARCHS)
def test_max_size_bounds_an_official_file_only_when_its_exact_size_is_unknown(arch):
    record = WEIGHTS_ENUMS[arch].IMAGENET1K_V1.value
    if record.size is not None:
        assert record.max_size is None  # the exact size is enforced instead
    else:  # torchvision's MiB figure, rounded to 3 decimals, plus slack for the rounding
        assert record.max_size == int(record.file_size * 2**20) + 1024
        assert record.max_size >= (record.file_size - 0.0005) * 2**20
    assert dataclasses.replace(record, url="https://example.org/" + record.file_name).max_size is None


def test_the_shared_constants_are_defined_once_and_re_exported():
    for name in ("OFFICIAL_BASE", "IMAGENET_MEAN", "IMAGENET_STD", "CAFFE_MEAN", "CAFFE_STD", "INTERPOLATIONS"):
        assert getattr(weights, name) is getattr(config, name) and name in weights.__all__
