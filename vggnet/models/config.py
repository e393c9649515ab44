"""The VGG paper's Table 1 as data (Simonyan & Zisserman, 2014, https://arxiv.org/abs/1409.1556), and the names
the models take: builders, heads, what a weights argument may be.

Each configuration is a row of the table: a number is a 3x3 convolution with that many output
channels, "M" is a 2x2 max-pool with stride 2. This module imports nothing, so the command line
checks its arguments against these names without importing torch.
"""

from __future__ import annotations

from collections.abc import Mapping
from types import MappingProxyType
from typing import Final, Literal

from vggnet.errors import UsageError

Layer = int | Literal["M"]

# fmt: off
CONFIGS: Final[Mapping[str, tuple[Layer, ...]]] = MappingProxyType({
    "A": (64, "M", 128, "M", 256, 256, "M", 512, 512, "M", 512, 512, "M"),
    "B": (64, 64, "M", 128, 128, "M", 256, 256, "M", 512, 512, "M", 512, 512, "M"),
    "D": (64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M", 512, 512, 512, "M"),
    "E": (64, 64, "M", 128, 128, "M", 256, 256, 256, 256, "M", 512, 512, 512, 512, "M", 512, 512, 512, 512, "M"),
})
# fmt: on

# builder name -> (configuration letter, batch_norm)
ARCHS: Final[Mapping[str, tuple[str, bool]]] = MappingProxyType(
    {
        "vgg11": ("A", False),
        "vgg11_bn": ("A", True),
        "vgg13": ("B", False),
        "vgg13_bn": ("B", True),
        "vgg16": ("D", False),
        "vgg16_bn": ("D", True),
        "vgg19": ("E", False),
        "vgg19_bn": ("E", True),
    }
)

IN_CHANNELS: Final = 3
POOLED_SIZE: Final = 7  # the adaptive pool's output side: 224 / 2**5
HIDDEN: Final = 4096  # width of fc6 and fc7
MIN_SIZE: Final = 32  # five stride-2 max-pools need at least 2**5 px per side

# "vgg": fc6-fc8 on the 7x7 pool; "gap": a global average pool and one Linear(512, num_classes) (issue 17);
# "fc7": the vgg head, named for what `finetune` trains on it (fc8 alone, a linear probe on fc7 features)
HEADS: Final = ("vgg", "gap", "fc7")
# timm's global_pool: "avg" pools as the head was built (the 7x7 adaptive average pool before fc6, or the gap
# head's global one); "" does not pool: the model returns pool5's map (only without a classifier, as in timm)
GLOBAL_POOLS: Final = ("avg", "")

# What `weights` may be (`sources.classify` follows these rules; every error about a weights argument quotes them)
WEIGHT_FILE_SUFFIXES: Final = (".pth", ".pt", ".pth.tar", ".ckpt", ".bin", ".safetensors", ".h5")
RANDOM_NAMES: Final = ("none", "random")
URL_SCHEMES: Final = ("http", "https", "file")
SOURCE_RULES: Final = (
    "a record name (DEFAULT, IMAGENET1K_V1, VGG16_Weights.IMAGENET1K_V1), the path of an existing checkpoint "
    f"file ({', '.join(WEIGHT_FILE_SUFFIXES)}: a state dict, a vggnet checkpoint (vggnet.save, finetune), "
    "safetensors or Keras weights), an http(s):// or file:// URL, a Hugging Face Hub name (hf-hub:timm/vgg16.tv_in1k), "
    "or none for random initialisation"
)


def check_arch(name: str) -> str:
    """The builder name `name` spells (any case); the one "unknown model" error, naming the valid ones.

    Args:
        name: a model name as a user typed it ("VGG16", "vgg16_bn").

    Returns:
        The builder name in lower case.

    Raises:
        UsageError: (a ValueError) no builder has that name; the message lists them.
    """
    key = str(name).lower()
    if key not in ARCHS:
        raise UsageError(f"unknown model {name!r}; valid: {', '.join(ARCHS)}")
    return key


def arch_config(arch: str) -> tuple[tuple[Layer, ...], bool]:
    """The layer row and batch_norm flag of a builder name such as "vgg16_bn".

    Args:
        arch: a builder name.

    Returns:
        (the row of Table 1: channel counts and "M" for max-pools, whether BatchNorm follows each conv).
    """
    letter, batch_norm = ARCHS[check_arch(arch)]
    return CONFIGS[letter], batch_norm
