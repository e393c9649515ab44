"""Models with packed weights (optimized, int8, the int8 fallback): what would leave the packed copies
behind is refused with the fix, the model keeps working after each refusal, and copies work.

Each model kind runs through every case (a matrix); the int8 kinds quantize, so they are in the slow run.
"""

import copy
import io
import pickle
from collections.abc import Callable

import pytest
import torch
from torch import nn

import vggnet
import vggnet.deploy.quantize
from vggnet.deploy import inference
from vggnet.deploy.packed import PackedModel
from vggnet.deploy.quantize import int8_instructions, quantize
from vggnet.errors import UnsupportedError
from vggnet.models.vgg import make_layers

SIDE = 32


def small_vgg(**kwargs: object) -> vggnet.VGG:
    """A seeded tiny VGG (16, 32 and 512 channels, three pools) with the gap head, unless told otherwise."""
    torch.manual_seed(0)
    return vggnet.VGG(make_layers([16, "M", 32, "M", 512, "M"]), **({"num_classes": 3, "head": "gap"} | kwargs)).eval()


def own_head() -> vggnet.VGG:
    """The 7x7 pool and a small classifier of one's own (fc6's 4096 outputs would be 100M parameters here)."""
    net = small_vgg(head="vgg")
    net.classifier = nn.Sequential(nn.Linear(25088, 16), nn.ReLU(True), nn.Dropout(0.3), nn.Linear(16, 3))
    return net.eval()


def images(n: int = 2, side: int = SIDE) -> torch.Tensor:
    return torch.randn(n, 3, side, side, generator=torch.Generator().manual_seed(1))


def _int8(net: vggnet.VGG) -> PackedModel:
    if int8_instructions() is None:
        pytest.skip("oneDNN has no int8 kernels on this CPU")
    return quantize(net, images(4), fallback=False)


def _int8_fallback(monkeypatch: pytest.MonkeyPatch) -> PackedModel:
    monkeypatch.setattr(vggnet.deploy.quantize, "int8_instructions", lambda: None)  # a CPU without int8 kernels
    model = quantize(small_vgg(), images(4))
    assert not model.int8
    return model


MAKERS: dict[str, Callable[[pytest.MonkeyPatch], PackedModel]] = {
    "float32": lambda mp: inference.optimize_for_inference(small_vgg(), dtype=torch.float32),
    "default": lambda mp: inference.optimize_for_inference(small_vgg()),  # bf16 on CPUs with native bf16
    "float32 eager": lambda mp: inference.optimize_for_inference(small_vgg(), dtype=torch.float32, onednn_graph=False),
    "own head": lambda mp: inference.optimize_for_inference(own_head(), dtype=torch.float32),
    "unpooled": lambda mp: inference.optimize_for_inference(small_vgg(num_classes=0, global_pool="")),
    "compiled": lambda mp: inference.optimize_for_inference(small_vgg(), dtype=torch.float32, compile=True),
    "int8": lambda mp: _int8(small_vgg()),
    "int8 own head": lambda mp: _int8(own_head()),
    "int8 fallback": _int8_fallback,
}
QUICK = ("float32", "default", "unpooled")  # the rest in the slow run
KINDS = [pytest.param(k, marks=() if k in QUICK else pytest.mark.slow) for k in MAKERS]


@pytest.fixture(params=KINDS)
def packed(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> tuple[PackedModel, torch.Tensor]:
    """A model of each kind, run twice (a program is made on a shape's second call), and its logits."""
    model = MAKERS[request.param](monkeypatch)
    assert isinstance(model, PackedModel)
    with torch.inference_mode():
        model(images())
        return model, model(images())


def logits(model: nn.Module) -> torch.Tensor:
    with torch.inference_mode():
        return model(images())


CONVERSIONS: dict[str, Callable[[nn.Module], object]] = {
    "half": lambda m: m.half(),
    "double": lambda m: m.double(),
    "to float64": lambda m: m.to(torch.float64),
    "to bfloat16 and back": lambda m: m.bfloat16().float(),
    "to meta": lambda m: m.to("meta"),
    "to_empty": lambda m: m.to_empty(device="cpu"),
}


@pytest.mark.parametrize("conversion", CONVERSIONS)
def test_a_conversion_that_would_change_a_tensor_is_refused_and_the_model_still_works(packed, conversion):
    model, before = packed
    dtype = next(model.parameters()).dtype
    if conversion == "to bfloat16 and back" and dtype == torch.bfloat16:
        conversion = "half"  # .bfloat16() changes nothing on a bf16 model
    change = {"to meta": "to meta", "to_empty": "to new tensors"}.get(conversion, "to torch.")
    refused = rf"cannot be converted {change}.*: its weights were packed for .* when it was made; .* again \("
    with pytest.raises(UnsupportedError, match=refused):
        CONVERSIONS[conversion](model)
    assert next(model.parameters()).dtype == dtype
    assert torch.equal(logits(model), before)


def test_a_conversion_that_changes_nothing_is_allowed(packed):
    model, before = packed
    dtype = next(model.parameters()).dtype
    assert model.to("cpu") is model and model.cpu() is model and model.to(dtype) is model
    assert model.eval() is model and model.share_memory() is model
    assert torch.equal(logits(model), before)


def test_eval_is_a_no_op_and_train_is_refused_with_the_fix(packed):
    model, before = packed
    assert model.eval() is model and not model.training
    with pytest.raises(UnsupportedError, match=r"inference-only: train the VGG itself, then .* again"):
        model.train()
    assert not model.training and torch.equal(logits(model), before)


def test_loading_a_state_dict_even_its_own_is_refused_and_the_model_still_works(packed):
    model, before = packed
    with pytest.raises(UnsupportedError, match=r"cannot load a state dict: .* load it into the VGG, then"):
        model.load_state_dict(model.state_dict())
    assert torch.equal(logits(model), before)


def test_loading_a_state_dict_into_a_module_holding_it_is_refused_too(packed):
    """nn.Module.load_state_dict asks each module for its part: the packed one refuses it."""
    model, before = packed
    holder = nn.Sequential(nn.Identity(), model)
    changed = {k: torch.randn_like(v) if v.is_floating_point() else v for k, v in holder.state_dict().items()}
    with pytest.raises(UnsupportedError, match=r"cannot load a state dict"):
        holder.load_state_dict(changed)
    assert torch.equal(logits(model), before)


@pytest.mark.parametrize("how", ["pickle", "torch.save"])
def test_saving_or_pickling_is_refused_with_the_fix(packed, how):
    model, before = packed
    refused = r"cannot be saved or pickled .* save the VGG \(vggnet\.save\) and, .* again"
    with pytest.raises(UnsupportedError, match=refused):
        pickle.dumps(model) if how == "pickle" else torch.save(model, io.BytesIO())
    assert torch.equal(logits(model), before)


def test_a_deep_copy_works_on_its_own_weights_and_a_shallow_copy_shares_them(packed):
    model, before = packed
    clone = copy.deepcopy(model)
    assert type(clone) is type(model) and clone is not model
    mine = {id(t) for t in model.parameters()} | {id(t) for t in model.buffers()}
    assert mine and not mine & ({id(t) for t in clone.parameters()} | {id(t) for t in clone.buffers()})
    for _ in range(3):  # the copy makes its own program, where the kind has them
        assert torch.equal(logits(clone), before)
    del model
    assert torch.equal(logits(clone), before)
    shallow = copy.copy(clone)
    assert next(shallow.parameters()) is next(clone.parameters())
    assert torch.equal(logits(shallow), before)


def test_a_deep_copy_keeps_hooks_and_attributes_of_ones_own(packed):
    model, before = packed
    calls: list[int] = []
    model.register_forward_hook(lambda module, args, out: calls.append(len(out)))
    model.note = {"trained on": "digits"}
    clone = copy.deepcopy(model)
    assert clone.note == model.note and clone.note is not model.note
    assert torch.equal(logits(clone), before) and calls == [len(before)]


@pytest.mark.parametrize("dtype", [torch.float64])
def test_a_model_with_nothing_packed_converts_loads_and_pickles_as_any_module(dtype):
    """float64 runs on torch's own kernels: nothing is packed, so nothing is refused."""
    model = inference.optimize_for_inference(small_vgg(), dtype=dtype)
    assert not model.is_packed()
    before = logits(model)
    restored = pickle.loads(pickle.dumps(model))
    assert torch.equal(logits(restored), before)
    restored.load_state_dict({k: v * 2 if v.is_floating_point() else v for k, v in model.state_dict().items()})
    assert not torch.equal(logits(restored), before)  # it computes what it holds
    assert next(model.to(torch.float32).parameters()).dtype == torch.float32


def test_export_refuses_a_packed_model_and_says_to_export_the_vgg(tmp_path):
    from vggnet.deploy.export import export
    from vggnet.errors import UsageTypeError

    model = inference.optimize_for_inference(small_vgg(), dtype=torch.float32)
    with pytest.raises(UsageTypeError, match=r"export takes the VGG, got an InferenceVGG .* export the VGG itself"):
        export(model, tmp_path / "vgg.onnx")
    assert not list(tmp_path.iterdir())
