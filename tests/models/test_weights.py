"""Checkpoint records: every field against the reference table and torchvision's metadata."""

import copy
import dataclasses
import inspect
import pickle
import subprocess
import sys
import typing
from pathlib import Path

import pytest
import torch

import vggnet
import vggnet.errors
import vggnet.models.weights as weights
from tests.helpers import fingerprint
from tests.reference import ARCHS, FEATURES, FULL_DIGESTS, RECORDS, SIZES
from vggnet.data.constants import CAFFE_MEAN
from vggnet.hub._fetching import OFFICIAL_BASE
from vggnet.models.sources import classify
from vggnet.models.weights import WEIGHTS_ENUMS, Weights, get_weight, weights_by_name

tvm = pytest.importorskip("torchvision.models")
CATEGORIES = (Path(__file__).parents[2] / "vggnet/data/imagenet_categories.txt").read_text().splitlines()


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
    assert weights_by_name(name, arch="vgg16") is vggnet.VGG16_Weights.IMAGENET1K_V1
    assert classify(name, "vgg16").record is vggnet.VGG16_Weights.IMAGENET1K_V1.value


def test_lookups_by_member_record_and_registry():
    member = vggnet.VGG19_BN_Weights.DEFAULT
    assert classify(member, "vgg19_bn").record is member.value
    custom = Weights(url="https://example.org/x-0123abcd.pth", sha256="0123ABCD")
    assert classify(custom, "vgg19_bn").record is custom and custom.sha256 == "0123abcd"
    assert classify(None, "vgg19_bn").kind == "random"
    assert get_weight("VGG16_Weights.IMAGENET1K_FEATURES") is vggnet.VGG16_Weights.IMAGENET1K_FEATURES
    assert vggnet.get_model_weights(vggnet.vgg13) is vggnet.VGG13_Weights
    assert set(WEIGHTS_ENUMS) == set(vggnet.list_models()) == set(ARCHS)


def test_unknown_names_list_the_valid_ones():
    # one lookup and one error for an unknown name, wherever it is given (a KeyError and a ValueError)
    calls = [
        lambda: weights_by_name("IMAGENET1K_V2", arch="vgg16"),
        lambda: vggnet.VGG16_Weights.verify("IMAGENET1K_V2"),
        lambda: vggnet.VGG16_Weights.from_name("IMAGENET1K_V2"),
        lambda: classify("IMAGENET1K_V2", "vgg16"),
        lambda: vggnet.vgg16(weights="IMAGENET1K_V2"),
    ]
    for call in calls:
        with pytest.raises(
            vggnet.errors.UnknownWeightsError, match=r"unknown weights 'IMAGENET1K_V2' .*IMAGENET1K_FEATURES"
        ):
            call()
    with pytest.raises(KeyError) as info:
        weights_by_name("IMAGENET1K_V2")
    assert isinstance(info.value, ValueError) and str(info.value).startswith("unknown weights")  # not KeyError's quotes
    with pytest.raises(vggnet.errors.ArchMismatch, match=r"holds vgg16 weights, not vgg11"):
        classify(vggnet.VGG16_Weights.DEFAULT, "vgg11")
    with pytest.raises(vggnet.errors.UnknownWeightsError, match=r"valid: .*VGG19_BN_Weights.IMAGENET1K_V1"):
        get_weight("VGG17_Weights.DEFAULT")
    with pytest.raises(vggnet.errors.UnknownWeightsError, match=r"give the enum's name too"):
        get_weight("DEFAULT")
    with pytest.raises(ValueError, match=r"unknown model 'vgg17'; valid: vgg11, vgg11_bn"):
        vggnet.get_model("vgg17")
    with pytest.raises(TypeError, match="weights must be a record name, a file path"):
        classify(3, "vgg16")  # type: ignore[arg-type]


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


# --- drop-in: torchvision's enum conventions -----------------------------------------------------------

MEMBERS = [(arch, name) for arch in ARCHS for name in vggnet.get_model_weights(arch).__members__]


@pytest.mark.parametrize(("arch", "name"), MEMBERS)
def test_every_member_pickles_copies_and_torch_saves_to_itself(arch, name, tmp_path):
    member = vggnet.get_model_weights(arch)[name]
    for protocol in range(pickle.HIGHEST_PROTOCOL + 1):
        assert pickle.loads(pickle.dumps(member, protocol)) is member
    assert copy.copy(member) is member and copy.deepcopy(member) is member
    config = {"weights": member, "stages": [member, {"again": member}]}
    copied = copy.deepcopy(config)
    assert copied["weights"] is member and copied["stages"][1]["again"] is member
    path = tmp_path / "checkpoint.pt"
    torch.save({"config": config, "step": 3}, path)
    loaded = torch.load(path, weights_only=False)
    assert loaded["config"]["weights"] is member and loaded["config"]["stages"][0] is member


@pytest.mark.slow
def test_a_pickled_member_is_the_same_member_in_a_fresh_interpreter():
    """By name, not by value: another process gets its own module's member, DEFAULT alias included."""
    payload = pickle.dumps([vggnet.VGG16_Weights.DEFAULT, vggnet.VGG16_Weights.IMAGENET1K_FEATURES])
    code = (
        "import pickle, sys, vggnet; a, b = pickle.load(sys.stdin.buffer); "
        "print(repr(a), a is vggnet.VGG16_Weights.DEFAULT, repr(b), b is vggnet.VGG16_Weights.IMAGENET1K_FEATURES)"
    )
    out = subprocess.run([sys.executable, "-c", code], input=payload, capture_output=True, check=True).stdout
    assert out.decode().split() == ["VGG16_Weights.IMAGENET1K_V1", "True", "VGG16_Weights.IMAGENET1K_FEATURES", "True"]


def test_records_pickle_and_deep_copy_to_equal_records():
    own = Weights(url="/data/mine.pth", sha256="a" * 64, categories=["cat", "dog"], metrics={"acc@1": 90.0}, size=10)
    for copied in (pickle.loads(pickle.dumps(own)), copy.deepcopy(own)):
        assert copied == own and copied is not own and hash(copied) == hash(own)
        with pytest.raises(TypeError):
            copied.metrics["acc@1"] = 0  # type: ignore[index]  # still read-only
    official = pickle.loads(pickle.dumps(vggnet.VGG11_Weights.DEFAULT.value))
    assert official == vggnet.VGG11_Weights.DEFAULT.value
    assert official.categories is vggnet.models.weights.IMAGENET_CATEGORIES  # the shared list, not a copy of it


@pytest.mark.parametrize("arch", ARCHS)
def test_repr_and_str_equal_torchvisions(arch):
    ours, theirs = vggnet.get_model_weights(arch), tvm.get_model_weights(arch)
    for name in theirs.__members__:
        assert repr(ours[name]) == repr(theirs[name]) == f"{theirs.__name__}.{theirs[name].name}"
        assert str(ours[name]) == str(theirs[name]) and f"{ours[name]}" == f"{theirs[name]}"
    assert repr(ours.DEFAULT) == f"{ours.__name__}.IMAGENET1K_V1"  # an alias prints as its member, as torchvision


class _Name(str):
    pass


# Each input is built from a library (vggnet or torchvision), so members come from the enum being verified.
VERIFY_INPUTS = {
    "None": lambda lib: None,
    "DEFAULT": lambda lib: "DEFAULT",
    "IMAGENET1K_V1": lambda lib: "IMAGENET1K_V1",
    "IMAGENET1K_FEATURES": lambda lib: "IMAGENET1K_FEATURES",
    "qualified": lambda lib: "VGG16_Weights.IMAGENET1K_V1",
    "qualified DEFAULT": lambda lib: "VGG16_Weights.DEFAULT",
    "unknown name": lambda lib: "IMAGENET1K_V2",
    "other enum's name": lambda lib: "VGG11_Weights.IMAGENET1K_V1",
    "lower case": lambda lib: "default",
    "empty": lambda lib: "",
    "str subclass": lambda lib: _Name("DEFAULT"),
    "bytes": lambda lib: b"DEFAULT",
    "int": lambda lib: 3,
    "True": lambda lib: True,
    "list": lambda lib: ["DEFAULT"],
    "member": lambda lib: lib.VGG16_Weights.DEFAULT,
    "features member": lambda lib: lib.VGG16_Weights.IMAGENET1K_FEATURES,
    "other model's member": lambda lib: lib.VGG11_Weights.DEFAULT,
    "bn member": lambda lib: lib.VGG16_BN_Weights.IMAGENET1K_V1,
    "record": lambda lib: lib.VGG16_Weights.DEFAULT.value,
}


def _outcome(verify, obj):
    try:
        result = verify(obj)
    except Exception as err:  # the type is what is compared
        return type(err)
    return None if result is None else (type(result).__name__, result.name)


@pytest.mark.parametrize("case", VERIFY_INPUTS)
def test_verify_behaves_as_torchvisions(case):
    make = VERIFY_INPUTS[case]
    ours = _outcome(vggnet.VGG16_Weights.verify, make(vggnet))
    theirs = _outcome(tvm.VGG16_Weights.verify, make(tvm))
    if isinstance(theirs, type):  # an error: ours is one of vggnet's, caught as torchvision's is
        assert isinstance(ours, type) and issubclass(ours, theirs) and issubclass(ours, vggnet.VggnetError)
    else:
        assert ours == theirs
    if isinstance(ours, tuple):
        assert isinstance(vggnet.VGG16_Weights.verify(make(vggnet)), vggnet.VGG16_Weights)


def test_verify_errors_name_the_valid_members():
    with pytest.raises(KeyError, match=r"unknown weights 'IMAGENET1K_V2' for VGG16_Weights; valid: .*FEATURES"):
        vggnet.VGG16_Weights.verify("IMAGENET1K_V2")
    with pytest.raises(TypeError, match=r"expected weights of VGG16_Weights .*, got VGG11_Weights.IMAGENET1K_V1$"):
        vggnet.VGG16_Weights.verify(vggnet.VGG11_Weights.DEFAULT)
    with pytest.raises(TypeError, match=r"VGG16_Weights.IMAGENET1K_V1, .*\), got int$"):
        vggnet.VGG16_Weights.verify(3)


@pytest.mark.parametrize(("arch", "name"), [(a, n) for a in ARCHS for n in tvm.get_model_weights(a).__members__])
def test_verify_and_resolve_take_torchvisions_members(arch, name):
    theirs = tvm.get_model_weights(arch)[name]
    ours = vggnet.get_model_weights(arch)[name]
    assert vggnet.get_model_weights(arch).verify(theirs) is ours
    assert classify(theirs, arch).record is ours.value
    other = "vgg13" if arch != "vgg13" else "vgg11"
    with pytest.raises(TypeError, match=rf"expected weights of {vggnet.get_model_weights(other).__name__}"):
        vggnet.get_model_weights(other).verify(theirs)
    with pytest.raises(ValueError, match=rf"holds {arch} weights, not {other}"):
        classify(theirs, other)


def test_a_torchvision_member_without_a_vggnet_record_is_refused_by_name_and_url():
    resnet = tvm.ResNet50_Weights.IMAGENET1K_V2
    message = rf"^ResNet50_Weights.IMAGENET1K_V2 \({resnet.url}\) has no vggnet record; vggnet knows .*vggnet.Weights"
    with pytest.raises(TypeError, match=message):
        vggnet.VGG16_Weights.verify(resnet)
    with pytest.raises(TypeError, match=message):
        classify(resnet, "vgg16")
    with pytest.raises(TypeError, match="Invalid Weight class"):  # torchvision's verify: the same error type
        tvm.VGG16_Weights.verify(resnet)


def test_get_state_dict_takes_torchvisions_check_hash_and_always_verifies(small_checkpoints, monkeypatch):
    served = small_checkpoints.zip
    member = vggnet.VGG11_Weights.IMAGENET1K_V1
    monkeypatch.setattr(member, "_value_", Weights(url=str(served.path), sha256=served.sha256))
    for check_hash in (True, False):
        state = member.get_state_dict(progress=False, check_hash=check_hash)
        assert fingerprint(state) == small_checkpoints.fingerprint
    assert fingerprint(member.value.get_state_dict(False, "cpu", check_hash=True)) == small_checkpoints.fingerprint
    monkeypatch.setattr(member, "_value_", Weights(url=str(served.path), sha256="0" * 64))
    with pytest.raises(vggnet.ChecksumError):  # check_hash=False does not switch verification off
        member.get_state_dict(progress=False, check_hash=False)


@pytest.mark.parametrize("arch", ARCHS)
def test_builder_annotations_are_read_as_torchvision_reads_them(arch):
    """torchvision's get_model_weights: signature(fn).parameters["weights"].annotation, then the enum in its union."""
    builder = getattr(vggnet, arch)
    annotation = inspect.signature(builder).parameters["weights"].annotation  # no eval_str, as torchvision
    found = [t for t in typing.get_args(annotation) if isinstance(t, type) and issubclass(t, vggnet.WeightsEnum)]
    assert found == [vggnet.get_model_weights(arch)] == [vggnet.get_model_weights(builder)]
    assert typing.get_type_hints(builder)["weights"] == annotation
    assert inspect.signature(builder).parameters["weights"].kind is inspect.Parameter.KEYWORD_ONLY


def test_torchvisions_get_model_weights_accepts_only_its_own_enum_class():
    """torchvision checks for a subclass of its own WeightsEnum, which vggnet cannot be without importing
    torchvision; the README sends torchvision users to vggnet.get_model_weights. If torchvision ever
    duck-types instead, this fails: update the README."""
    with pytest.raises(ValueError, match="couldn't be retrieved"):
        tvm.get_model_weights(vggnet.vgg16)
    assert vggnet.get_model_weights(vggnet.vgg16) is vggnet.VGG16_Weights


@pytest.mark.parametrize("arch", ARCHS)
def test_max_size_bounds_an_official_file_only_when_its_exact_size_is_unknown(arch):
    record = WEIGHTS_ENUMS[arch].IMAGENET1K_V1.value
    if record.size is not None:
        assert record.max_size is None  # the exact size is enforced instead
    else:  # torchvision's MiB figure, rounded to 3 decimals, plus slack for the rounding
        assert record.max_size == int(record.file_size * 2**20) + 1024
        assert record.max_size >= (record.file_size - 0.0005) * 2**20
    assert dataclasses.replace(record, url="https://example.org/" + record.file_name).max_size is None


@pytest.mark.slow
def test_the_shared_constants_are_defined_once():
    import ast

    names = ("OFFICIAL_BASE", "IMAGENET_MEAN", "IMAGENET_STD", "CAFFE_MEAN", "CAFFE_STD", "INTERPOLATIONS", "HEADS")
    homes: dict[str, list[str]] = {name: [] for name in names}
    for path in sorted((Path(__file__).parents[2] / "vggnet").rglob("*.py")):
        for node in ast.parse(path.read_text()).body:
            targets = (
                node.targets
                if isinstance(node, ast.Assign)
                else [node.target]
                if isinstance(node, ast.AnnAssign)
                else []
            )
            for target in targets:
                if isinstance(target, ast.Name) and target.id in homes:
                    homes[target.id].append(path.name)
    assert homes == {
        "OFFICIAL_BASE": ["_fetching.py"], "HEADS": ["config.py"],
        **{name: ["constants.py"] for name in names if name not in ("OFFICIAL_BASE", "HEADS")},
    }  # fmt: skip
    assert weights.VGG16_Weights.IMAGENET1K_FEATURES.value.mean is CAFFE_MEAN
