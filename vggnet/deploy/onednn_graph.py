"""oneDNN Graph programs: a folded VGG traced once per input shape and run by TorchScript's oneDNN fuser.

Eager PyTorch reaches oneDNN through ideep, which builds each convolution's descriptors and attributes
again on every call: 30-40 µs a call besides the arithmetic (a 16-channel 3x3 convolution on a 4x4 map,
bf16, 2 threads: 41.5 µs a call eagerly, 13.2 µs as a oneDNN Graph partition). TorchScript's oneDNN
fuser (LLGA, `torch.jit.enable_onednn_fusion`) compiles each convolution with its ReLU, each max-pool
and each linear into a oneDNN Graph partition once, and runs them with what it compiled.

A program takes a batch as the eager path does (`Plan`: a few images at a time through the first steps,
then the whole batch; made whole throughout, vgg16 ran a bf16 batch of 8 in 187 ms against 141
eagerly). vgg16 on the 2-core Xeon (AMX), program and eager path in one process taking turns: bf16
batch 1 8% faster (24.3 against 26.4 ms), batch 8 5% (107.0 against 112.3 ms, 40 rounds); float32 batch
1 4%; the logits the same, bit for bit, as the eager path's with its weights packed for that batch.

A program is made on the second call of an input shape (trace, freeze, two warm-up calls with the fuser
on: about 0.4 s for vgg16) and kept with the model, at most `MAX_PROGRAMS` per model; a shape's first
call runs eagerly. `InferenceVGG` asks for programs only for batches of the size its eager weights are
packed for, where the two give the same logits, bit for bit. The fuser's switch is process-wide: it is
on only while a program is made, under a lock, and set back after; TorchScript code that another thread
runs for the first time in that window is fused too, and stays so. Python's warning filters are
process-wide as well: while a program is made they ignore the deprecation warnings of `torch.jit.trace` and
`freeze`, in every thread.

A program calls no hooks, so a net with forward hooks or pre-hooks on its modules gets none (hooks added
after a program was made are not called by it), and under CPU autocast, which the eager fused path
ignores, calls run eagerly. Changing the weights of an optimized model's net is not supported: the
eager path packed its own copies when it was built, and a program may or may not see the change
(oneDNN packs the constants it caches); optimize the model again instead. A program that fails or
fuses nothing is logged as a warning, and the model then makes no more.

Programs are on by default (`optimize_for_inference(..., onednn_graph=False)` turns them off). What they
cost in memory, measured for vgg16 in bf16 on the 2-core Xeon: a live model with a program for one shape
held 285 MB more than without (oneDNN's packed copies of the weights); deleting it gave back all but
about 2.5 MB (the traced code TorchScript keeps) at once (`make_program` collects the reference cycle
that `torch.jit.trace` leaves holding the traced module), and the process kept about 300 MB of oneDNN's once,
however many models came and went (three at a time or one after another). That is because a program
lives in a TorchScript compilation unit of its own (`_in_own_unit`): traced and frozen in TorchScript's
process-wide unit, as `torch.jit.trace` and `freeze` put them, the frozen methods hold the net's weight
tensors as constants until the process exits (368 MB per vgg16 bf16 program, which got a test worker
killed for memory when programs were first made the default).

TorchScript is deprecated in PyTorch 2.x; where it is missing, a model holds a module whose trace would
not be its computation (`traceable`), or making a program fails, the eager path runs.
"""

from __future__ import annotations

import copy
import gc
import io
import logging
import threading
import warnings
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from vggnet.models.vgg import VGG

__all__ = ["MAX_PROGRAMS", "Plan", "Programs", "make_program", "onednn_graph_available", "traceable"]

logger = logging.getLogger(__name__)

# Input shapes a model keeps a program for; further shapes run eagerly.
MAX_PROGRAMS = 4
# Shapes called once that a model remembers (forgotten all at once past this)
_MAX_SEEN = 64
# Calls with the fuser on: TorchScript's profiling executor profiles, then fuses (one call sufficed)
_WARM_CALLS = 2
# The modules whose trace is exactly their computation (no Python control flow, no state): exact types
_PLAIN = (
    nn.AdaptiveAvgPool2d,
    nn.Conv2d,
    nn.Dropout,
    nn.Flatten,
    nn.Identity,
    nn.Linear,
    nn.MaxPool2d,
    nn.ReLU,
    nn.Sequential,
)
_fuser = threading.Lock()  # the fuser's switch is process-wide: one program made at a time


def onednn_graph_available() -> bool:
    """Whether this torch has TorchScript's oneDNN fuser and oneDNN.

    Returns:
        True where `torch.jit.enable_onednn_fusion` exists and oneDNN is built in.
    """
    return hasattr(torch.jit, "enable_onednn_fusion") and torch.backends.mkldnn.is_available()  # type: ignore[no-untyped-call]


def traceable(net: VGG) -> bool:
    """Whether every module of `net` is one whose trace is its computation (exact types, not subclasses).

    Args:
        net: a folded VGG.

    Returns:
        True if its features, pool and classifier hold only convolutions, ReLUs, pools, linears,
        dropouts, flattens, identities and sequentials.
    """
    parts = (net.features, net.avgpool, net.classifier)
    return all(type(m) in _PLAIN for part in parts for m in part.modules())


@dataclass(frozen=True)
class Plan:
    """How the eager path runs one batch, which its program repeats.

    Args:
        chunk: the images at a time through the steps before `whole_from`.
        whole_from: the first step that takes the whole batch (0: all do).
    """

    chunk: int
    whole_from: int


class _Logits(nn.Module):
    """What `InferenceVGG` computes for one input shape, as plain modules: the thing traced."""

    def __init__(self, net: VGG, steps: list[nn.Module], plan: Plan, batch: int, *, skip_pool: tuple[int, int] | None):
        super().__init__()
        self.head = nn.Sequential(*steps[: plan.whole_from])
        self.tail = nn.Sequential(*steps[plan.whole_from :])
        self.chunk = plan.chunk if plan.whole_from > 0 and plan.chunk < batch else 0  # 0: the whole batch at once
        self.avgpool = net.avgpool
        self.skip_pool = skip_pool
        self.classifier = net.classifier
        self.pooled = net.global_pool != ""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # the first steps a few images at a time where the eager path takes them so, the rest the whole batch
        x = torch.cat([self.head(part) for part in torch.split(x, self.chunk)]) if self.chunk else self.head(x)
        x = self.tail(x)
        if not self.pooled:  # global_pool="": pool5's map, as VGG.forward_head
            return x
        # decided on the real map while tracing (one shape per program), as the eager path decides each call
        if self.skip_pool is None or tuple(x.shape[-2:]) != self.skip_pool:
            x = self.avgpool(x)
        logits: torch.Tensor = self.classifier(torch.flatten(x, 1))  # (N, 512, 7, 7) -> (N, 25088)
        return logits


class Programs:
    """One model's oneDNN Graph programs by input shape: made on a shape's second call, never copied or saved.

    A shape's first call runs eagerly: a shape seen once (the last, partial batch of a dataset) is not
    worth the time it takes to make a program (about 0.4 s for vgg16).

    Args:
        net: the folded VGG the programs compute.
        steps: its features as the eager path runs them, one module per step (a convolution and its
            ReLU as one Sequential), so that a `Plan`'s step indices mean the same here.
        skip_pool: the map size (H, W) at which the eager path skips the adaptive average pool (its
            output size), or None where it never does.
    """

    def __init__(self, net: VGG, steps: list[nn.Module], skip_pool: tuple[int, int] | None = None) -> None:
        self.net = net
        self.steps = steps
        self.skip_pool = skip_pool
        self.failed = False  # a program failed or fused nothing: no more are tried for this model
        self._programs: dict[tuple[Any, ...], torch.jit.ScriptModule] = {}
        self._seen: set[tuple[Any, ...]] = set()  # shapes called once, up to _MAX_SEEN
        self._making = threading.Lock()

    def __deepcopy__(self, memo: dict[int, Any]) -> Programs:
        """No programs: a copy makes its own, for its own copy of the net."""
        return Programs(copy.deepcopy(self.net, memo), copy.deepcopy(self.steps, memo), self.skip_pool)

    def __getstate__(self) -> dict[str, Any]:
        """The net and steps alone: a program (TorchScript holding oneDNN's partitions) does not pickle."""
        return {"net": self.net, "steps": self.steps, "skip_pool": self.skip_pool}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__init__(state["net"], state["steps"], state["skip_pool"])  # type: ignore[misc]

    def __len__(self) -> int:
        """How many shapes have a program."""
        return len(self._programs)

    def get(self, x: torch.Tensor, plan: Plan) -> torch.jit.ScriptModule | None:
        """The program for `x`'s shape, made now if this is its second call; None: run `x` eagerly.

        Args:
            x: the batch about to run (its shape, dtype and layout are what the program is made for).
            plan: how the eager path runs this batch (a function of its shape and dtype).

        Returns:
            The program, or None: the shape's first call, `MAX_PROGRAMS` shapes already have one, a
            module of the net has hooks (a program would not call them), or a program of this model
            failed or fused nothing (logged once; none is tried again).
        """
        key = (tuple(x.shape), x.dtype, x.is_contiguous(memory_format=torch.channels_last), plan)
        program = self._programs.get(key)
        if program is not None or self.failed or len(self._programs) >= MAX_PROGRAMS:
            return program
        with self._making:
            if key in self._programs or self.failed or _has_hooks(self.net):
                return self._programs.get(key)
            if key not in self._seen:
                self._seen = self._seen if len(self._seen) < _MAX_SEEN else set()
                self._seen.add(key)
                return None
            made = make_program(_Logits(self.net, self.steps, plan, len(x), skip_pool=self.skip_pool), x)
            if made is None:
                self.failed = True
                return None
            self._programs[key] = made
            return made


def _has_hooks(net: nn.Module) -> bool:
    """Whether a module of `net` has forward hooks or pre-hooks, module-level ones (a trace calls none)."""
    return any(m._forward_hooks or m._forward_pre_hooks for m in net.modules())


def _in_own_unit(traced: torch.jit.ScriptModule) -> torch.jit.ScriptModule:
    """`traced` again, its types in a compilation unit of its own that goes with it, holding the same tensors.

    `torch.jit.trace` registers a module's types in TorchScript's process-wide compilation unit, and
    `torch.jit.freeze` makes the frozen copy's types (whose methods hold the tensors as constants) in
    the unit of the module it freezes: frozen there, a program would keep its tensors until the process
    exits. `torch.jit.load` makes a unit for each module it loads, freed with the module. So `traced`
    is saved to memory with its tensors swapped for empty ones (its types and code alone, a few kB),
    loaded back, and given its own tensors again (not copies). What stays in the process-wide unit is
    the traced types' code.

    For traces of `_PLAIN` modules and `WinogradConvReLU` only: every tensor of theirs is a parameter or a
    buffer, non-persistent ones included (a plain
    tensor attribute would be traced in as a copy), and none is shared with a TorchScript module of
    the caller's (whose tensors would be left empty).

    Args:
        traced: a module from `torch.jit.trace`; its tensors are left empty.

    Returns:
        A module computing what `traced` did, with `traced`'s tensors.
    """
    tensors = traced.state_dict(keep_vars=True)
    for name, tensor in tensors.items():
        _set_tensor(traced, name, torch.empty(0, dtype=tensor.dtype))
    saved = io.BytesIO()
    torch.jit.save(traced, saved)
    saved.seek(0)
    loaded: torch.jit.ScriptModule = torch.jit.load(saved, map_location="cpu")  # type: ignore[no-untyped-call]
    for name, tensor in tensors.items():
        _set_tensor(loaded, name, tensor)
    return loaded


def _set_tensor(module: torch.jit.ScriptModule, name: str, tensor: torch.Tensor) -> None:
    """Set the parameter or buffer `name` ("features.0.weight") of a TorchScript module to `tensor`."""
    *path, leaf = name.split(".")
    for part in path:
        module = getattr(module, part)
    module._c.setattr(leaf, tensor)


def make_program(module: nn.Module, example: torch.Tensor) -> torch.jit.ScriptModule | None:
    """`module` traced, frozen and run with TorchScript's oneDNN fuser on until it is fused for `example`.

    Args:
        module: an eval-mode module of `_PLAIN` modules and `vggnet.deploy.winograd.WinogradConvReLU`s.
        example: an input of the shape, dtype and layout the program will take.

    Returns:
        The program; None where TorchScript fails on it or fused nothing (logged as a warning).
    """
    try:
        return _make_program(module, example)
    finally:
        # torch.jit.trace leaves a reference cycle (a closure of its own and a dict) that holds `module`,
        # and through it the weights: collected now, they go with the model, not at some later collection
        gc.collect()


def _make_program(module: nn.Module, example: torch.Tensor) -> torch.jit.ScriptModule | None:
    """`make_program`, but for the collection of what tracing leaves behind."""
    with _fuser:
        was = torch.jit.onednn_fusion_enabled()  # type: ignore[no-untyped-call]
        try:
            torch.jit.enable_onednn_fusion(True)
            with warnings.catch_warnings(), torch.no_grad():
                warnings.simplefilter("ignore")  # torch.jit.trace and freeze are deprecated (FutureWarning)
                traced = torch.jit.trace(module.eval(), example, check_trace=False)  # type: ignore[no-untyped-call]
                program: torch.jit.ScriptModule = torch.jit.freeze(_in_own_unit(traced))
                for _ in range(_WARM_CALLS):
                    program(example)
                fused = "oneDNNFusionGroup" in str(program.graph_for(example))
        except Exception as err:  # TorchScript raises RuntimeError, torch.jit.Error and others: all mean no program
            logger.warning("no oneDNN Graph program for %s: %s; running eagerly", tuple(example.shape), err)
            return None
        finally:
            torch.jit.enable_onednn_fusion(was)
    if not fused:
        logger.warning("oneDNN Graph fused nothing for %s; running eagerly", tuple(example.shape))
        return None
    return program
