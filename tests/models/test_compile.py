"""torch.compile: no graph break in forward for any head; freezing costs no recompile torchvision avoids (issue 25).

Dynamo alone decides graph breaks and recompiles, so these tests trace with `torch._dynamo.explain` or
compile with the "eager" / "aot_eager" backends: the same guards as Inductor, without its code generation
(which takes minutes for a VGG on two cores). The timings with Inductor are benchmarks/bench_compile.py's.
"""

import copy

import pytest
import torch
import torch.nn.functional as F
from torch._dynamo.utils import counters

import vggnet

tvm = pytest.importorskip("torchvision.models")

X = torch.randn(2, 3, 32, 32)  # the smallest input a VGG takes: five 2x2 pools leave 1x1
Y = torch.tensor([0, 1])


def graph_breaks(model: torch.nn.Module) -> tuple[int, int, list[str]]:
    """(graphs, graph breaks, reasons) of one forward of `model` on X."""
    torch._dynamo.reset()
    explained = torch._dynamo.explain(model)(X)
    return explained.graph_count, explained.graph_break_count, [str(b.reason) for b in explained.break_reasons]


@pytest.mark.slow
@pytest.mark.parametrize(("head", "num_classes"), [("vgg", 10), ("gap", 10), ("fc7", 10), ("vgg", 0)])
def test_forward_has_no_graph_break_for_any_head(head, num_classes):
    model = vggnet.vgg11_bn(num_classes=num_classes, head=head)
    for mode in (True, False):
        assert graph_breaks(model.train(mode)) == (1, 0, []), f"train={mode}"
    if head != "gap":  # freeze reads the named taps, which the gap head does not have
        model.freeze()  # frozen layers run in eval mode inside a training model: still one graph
        assert graph_breaks(model.train()) == (1, 0, [])


@pytest.mark.slow
def test_checkpointed_forward_compiles_whole_and_updates_batchnorm_once():
    """The eager checkpoint's context_fn (bound to the block, to restore BatchNorm statistics after the
    recomputation) broke the graph once per block; compiled, the partitioner's recomputation updates nothing."""
    torch.manual_seed(0)
    plain = vggnet.vgg11_bn(num_classes=10).train()
    checkpointed = copy.deepcopy(plain)
    checkpointed.set_grad_checkpointing(True)
    assert graph_breaks(checkpointed) == (1, 0, [])
    checkpointed.load_state_dict(plain.state_dict())  # explain ran a forward: its statistics are undone
    torch._dynamo.reset()
    compiled = torch.compile(checkpointed, backend="aot_eager", fullgraph=True)
    for net in (plain, compiled):
        torch.manual_seed(1)  # the same dropout masks
        F.cross_entropy(net(X), Y).backward()
    for (name, expected), got in zip(plain.state_dict().items(), checkpointed.state_dict().values()):
        torch.testing.assert_close(got, expected, msg=name)  # running statistics updated once, as eagerly
    for p, q in zip(plain.parameters(), checkpointed.parameters()):
        torch.testing.assert_close(q.grad, p.grad)


def compiled_graphs(model: torch.nn.Module, freeze, unfreeze) -> tuple[int, int]:
    """(graphs after head-only steps, more graphs after unfreezing and more steps) of a compiled training loop."""
    torch._dynamo.reset()
    counters.clear()
    freeze(model)
    net = torch.compile(model.train(), backend="eager")
    optimizer = torch.optim.SGD(model.parameters(), lr=1e-3)

    def step() -> None:
        optimizer.zero_grad()
        F.cross_entropy(net(X), Y).backward()
        optimizer.step()

    step(), step()
    head_only = counters["stats"]["unique_graphs"]
    unfreeze(model)
    model.train()  # as a trainer does at each epoch
    step(), step()
    return head_only, counters["stats"]["unique_graphs"] - head_only


@pytest.mark.slow
def test_unfreezing_recompiles_no_more_than_torchvision():
    """vggnet's freeze/unfreeze (requires_grad, and eval mode for the frozen BatchNorms) against a torchvision
    user's requires_grad_ on `features`: one graph for the head-only steps, one more after unfreezing."""
    ours = compiled_graphs(vggnet.vgg11_bn(num_classes=10), lambda m: m.freeze(), lambda m: m.unfreeze())
    theirs = compiled_graphs(
        tvm.vgg11_bn(num_classes=10),
        lambda m: m.features.requires_grad_(False),
        lambda m: m.features.requires_grad_(True),
    )
    assert theirs == (1, 1)
    assert ours[0] == 1 and ours[1] <= theirs[1]
