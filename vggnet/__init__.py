"""vggnet: the VGG family for PyTorch, standalone, with verified official checkpoints.

    import vggnet
    model = vggnet.vgg16(weights="DEFAULT").eval()
    preprocess = vggnet.VGG16_Weights.DEFAULT.transforms()

This module holds what a user of a model library imports: the eight builders and their weight enums,
`VGG`, the records, the registry, the errors, `save` and `load` (vggnet's checkpoint format, which brings a
model's class names and preset with it). Everything else lives in the package named
after what it is for: `vggnet.models` (the network, taps, summaries), `vggnet.hub` (the weights store),
`vggnet.data` (images in), `vggnet.train`, `vggnet.batch` (predict, evaluate, embed), `vggnet.seeing`
(LPIPS, losses, Grad-CAM), `vggnet.deploy` (inference, int8, export) and `vggnet.cli`.

Importing vggnet imports nothing else (not even torch): each name below is loaded on first use, so
`vggnet --help` answers at once.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

__version__ = "0.2.0"

# public name -> the module that defines it
_HOMES = {
    **dict.fromkeys(
        ["vgg11", "vgg11_bn", "vgg13", "vgg13_bn", "vgg16", "vgg16_bn", "vgg19", "vgg19_bn"], "vggnet.models.builders"
    ),
    **dict.fromkeys(["get_model", "get_model_weights", "list_models"], "vggnet.models.builders"),
    **dict.fromkeys(
        [
            "VGG11_Weights",
            "VGG11_BN_Weights",
            "VGG13_Weights",
            "VGG13_BN_Weights",
            "VGG16_Weights",
            "VGG16_BN_Weights",
            "VGG19_Weights",
            "VGG19_BN_Weights",
            "Weights",
            "WeightsEnum",
            "get_weight",
        ],
        "vggnet.models.weights",
    ),
    "VGG": "vggnet.models.vgg",
    "load": "vggnet.models.checkpoint",
    "save": "vggnet.models.saved",
    **dict.fromkeys(
        ["VggnetError", "UsageError", "ChecksumError", "DownloadError", "BadCheckpointError"], "vggnet.errors"
    ),
}

__all__ = [
    "VGG",
    "VGG11_BN_Weights",
    "VGG11_Weights",
    "VGG13_BN_Weights",
    "VGG13_Weights",
    "VGG16_BN_Weights",
    "VGG16_Weights",
    "VGG19_BN_Weights",
    "VGG19_Weights",
    "BadCheckpointError",
    "ChecksumError",
    "DownloadError",
    "UsageError",
    "VggnetError",
    "Weights",
    "WeightsEnum",
    "__version__",
    "get_model",
    "get_model_weights",
    "get_weight",
    "list_models",
    "load",
    "save",
    "vgg11",
    "vgg11_bn",
    "vgg13",
    "vgg13_bn",
    "vgg16",
    "vgg16_bn",
    "vgg19",
    "vgg19_bn",
]


def __getattr__(name: str) -> Any:
    home = _HOMES.get(name)
    if home is None:
        raise AttributeError(f"module 'vggnet' has no attribute {name!r}")
    value = getattr(importlib.import_module(home), name)
    globals()[name] = value  # loaded once: later lookups do not come here
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *__all__})


if TYPE_CHECKING:  # what type checkers, IDEs and the API reference see
    from vggnet.errors import BadCheckpointError, ChecksumError, DownloadError, UsageError, VggnetError
    from vggnet.models.builders import (
        get_model,
        get_model_weights,
        list_models,
        vgg11,
        vgg11_bn,
        vgg13,
        vgg13_bn,
        vgg16,
        vgg16_bn,
        vgg19,
        vgg19_bn,
    )
    from vggnet.models.checkpoint import load
    from vggnet.models.saved import save
    from vggnet.models.vgg import VGG
    from vggnet.models.weights import (
        VGG11_BN_Weights,
        VGG11_Weights,
        VGG13_BN_Weights,
        VGG13_Weights,
        VGG16_BN_Weights,
        VGG16_Weights,
        VGG19_BN_Weights,
        VGG19_Weights,
        Weights,
        WeightsEnum,
        get_weight,
    )
