"""state_dicts: the architecture read off a state dict's keys, and what its tensors must be before they are assigned."""

from pathlib import Path

import pytest
import torch

import vggnet
from vggnet.errors import BadCheckpointError
from vggnet.hub import _loading as loading
from vggnet.models.state_dicts import arch_of_state, load_checkpoint_state

# --- the architecture a state dict is for ----------------------------------------------------------


@pytest.mark.parametrize("arch", vggnet.list_models())
def test_arch_of_state_reads_the_model_off_the_keys(arch):
    with torch.device("meta"):
        state = vggnet.get_model(arch, num_classes=10, in_chans=1).state_dict()  # fc8 and conv1_1 widths differ
    assert arch_of_state(state) == arch
    legacy = {k: v for k, v in state.items() if not k.endswith("num_batches_tracked")}  # as the 2017 files
    assert arch_of_state(legacy) == arch


def test_arch_of_state_names_the_valid_models():
    with torch.device("meta"):
        state = vggnet.vgg16().state_dict()
    del state["classifier.3.bias"]
    with pytest.raises(ValueError, match=r"^my.pth is not a VGG checkpoint: .* vgg11, vgg11_bn, .*, vgg19_bn$"):
        arch_of_state(state, "my.pth")
    with pytest.raises(ValueError, match=r"^the state dict is not"):
        arch_of_state({**state, "classifier.3.bias": torch.zeros(4096), "extra": torch.zeros(1)})


# --- what a checkpoint may contain (issue 11 item 5) -----------------------------------------------


def _tiny() -> torch.nn.Module:
    """A meta-device module with a VGG-style BatchNorm (its num_batches_tracked) for the content checks."""
    with torch.device("meta"):
        return torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.BatchNorm2d(4), torch.nn.Linear(4, 2))


def _tiny_state() -> dict[str, torch.Tensor]:
    torch.manual_seed(0)
    state = dict(
        torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.BatchNorm2d(4), torch.nn.Linear(4, 2)).state_dict()
    )
    state["1.num_batches_tracked"] = torch.tensor(7)
    return state


def _from_file(state: object, tmp_path: Path) -> object:
    """`state` after a round trip through a real file and loading's weights-only load."""
    path = tmp_path / "state.pth"
    torch.save(state, path)
    with open(path, "rb") as f:
        return loading.weights_only_load(f, path, mmap=True, map_location="cpu")


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"0.weight": lambda t: t.to_sparse()}, r"0\.weight \(sparse_coo\) is not dense"),
        ({"2.weight": lambda t: t.to_sparse_csr()}, r"2\.weight \(sparse_csr\) is not dense"),
        ({"0.bias": lambda t: torch.quantize_per_tensor(t, 0.1, 0, torch.qint8)}, r"0\.bias \(quantized\) is not"),
        ({"0.weight": lambda t: t.to(torch.int64), "2.bias": lambda t: t.to(torch.int32)},
         r"0\.weight \(torch\.int64\), 2\.bias \(torch\.int32\) are not floating point"),
        ({"2.bias": lambda t: t > 0}, r"2\.bias \(torch\.bool\) is not floating point"),
        ({"2.bias": lambda t: t.to(torch.complex64)}, r"2\.bias \(torch\.complex64\) is not floating"),
        ({"1.num_batches_tracked": lambda t: t.float()}, r"1\.num_batches_tracked \(torch\.float32\) is not of an"),
        ({"0.weight": lambda t: t.to("meta")}, r"0\.weight is on the meta device, with no values"),
    ],
)  # fmt: skip
def test_tensors_that_are_not_dense_floats_are_refused_from_a_real_file(tmp_path, change, message):
    state = _tiny_state()
    state.update({key: make(state[key]) for key, make in change.items()})
    loaded = _from_file(state, tmp_path)
    model = _tiny()
    with pytest.raises(BadCheckpointError, match=rf"^my\.pth cannot be loaded: {message}.*nothing was loaded"):
        load_checkpoint_state(model, loaded, source="my.pth")
    assert all(p.device.type == "meta" for p in model.parameters())  # nothing was assigned


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float64])
def test_other_float_dtypes_are_cast_to_the_models(tmp_path, dtype):
    state = {k: (v.to(dtype) if v.is_floating_point() else v.to(torch.int32)) for k, v in _tiny_state().items()}
    loaded = _from_file(state, tmp_path)
    model = _tiny()
    load_checkpoint_state(model, loaded)
    got = model.state_dict()
    assert {t.dtype for k, t in got.items() if "num_batches" not in k} == {torch.float32}
    assert got["1.num_batches_tracked"].dtype == torch.long and int(got["1.num_batches_tracked"]) == 7
    for key, value in state.items():  # the checkpoint's values, only widened or rounded to float32
        assert torch.equal(got[key], value.to(got[key].dtype)), key


def test_a_float64_value_beyond_float32_is_refused_not_loaded_as_inf(tmp_path):
    state = {k: v.double() if v.is_floating_point() else v for k, v in _tiny_state().items()}
    state["2.weight"][0, 0] = 1e300  # finite in float64, inf in the model's float32
    with pytest.raises(BadCheckpointError, match=r"2\.weight \(0 NaN, 1 Inf\)"):
        load_checkpoint_state(_tiny(), _from_file(state, tmp_path))


def test_nan_and_inf_are_refused_naming_the_first_tensors_and_the_count(tmp_path):
    with torch.device("meta"):
        model = torch.nn.Sequential(*[torch.nn.Linear(2, 2) for _ in range(4)])
    state = {
        f"{i}.{p}": torch.ones(2, 2) if p == "weight" else torch.ones(2) for i in range(4) for p in ("weight", "bias")
    }
    for i, key in enumerate(sorted(state)[:7]):
        state[key].view(-1)[0] = float("nan") if i % 2 else float("-inf")
    with pytest.raises(BadCheckpointError) as info:
        load_checkpoint_state(model, _from_file(state, tmp_path), source="run.pth")
    message = str(info.value)
    assert message.startswith("run.pth holds NaN or Inf in 7 tensor(s): 0.weight (1 NaN, 0 Inf), 0.bias (0 NaN, 1 Inf)")
    assert "and 2 more; nothing was loaded" in message and "\n" not in message
    assert "nonfinite" in message  # how a record says NaN is expected


def test_nonfinite_prefixes_allow_nan_only_there(tmp_path):
    state = _tiny_state()
    state["2.weight"].fill_(float("nan"))  # the features-only VGG16's classifier, in small
    loaded = _from_file(state, tmp_path)
    model = _tiny()
    load_checkpoint_state(model, loaded, nonfinite=("2.",))
    assert model[2].weight.isnan().all() and torch.equal(model[0].weight, state["0.weight"])
    state["0.bias"][1] = float("inf")
    with pytest.raises(BadCheckpointError, match=r"in 1 tensor\(s\): 0\.bias \(0 NaN, 1 Inf\)"):
        load_checkpoint_state(_tiny(), _from_file(state, tmp_path), nonfinite=("2.",))


def test_a_tensor_on_another_device_is_refused_and_cpu_tensors_follow_the_device(tmp_path):
    model = _tiny()
    load_checkpoint_state(model, _tiny_state(), device="meta")  # the asked device: kept there
    assert model[0].weight.device.type == "meta"
    model = _tiny()
    stride0 = {**_tiny_state(), "2.weight": torch.ones(1, 1).expand(2, 4)}  # one float seen 8 times
    load_checkpoint_state(model, stride0)
    assert model[2].weight.is_contiguous()  # its own memory: training updates one weight at a time
    model[2].weight.data[0, 0] = 5
    assert model[2].weight.sum() == 12
    with pytest.raises(BadCheckpointError, match=r"0\.bias is on the meta device"):
        load_checkpoint_state(_tiny(), {**_tiny_state(), "0.bias": torch.empty(4, device="meta")})


@pytest.mark.parametrize(
    ("state", "message"),
    [
        ({"a": 1, "b": "text"}, r"entries 'a' \(int\), 'b' \(str\) are not tensors under string names"),
        ([torch.ones(1)], r"is not a state dict \(a mapping of names to tensors\): it is a list"),
        ({"state_dict": {"w": torch.ones(1)}}, r"entries 'state_dict' \(dict\) are not tensors"),
    ],
)
def test_a_state_that_is_no_state_dict_is_named(state, message):
    with pytest.raises(BadCheckpointError, match=message):
        load_checkpoint_state(_tiny(), state, source="x.pth")


def test_a_hostile_key_is_cut_short_in_the_mismatch_message():
    with pytest.raises(RuntimeError, match=r"unexpected keys \['x{97}\.\.\.'\]") as info:
        load_checkpoint_state(_tiny(), {**_tiny_state(), "x" * 1_000_000: torch.ones(1)})
    assert len(str(info.value)) < 1000
