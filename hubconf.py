"""torch.hub entry points: the eight builders and `get_weight`.

For example `torch.hub.load("<owner>/vggnet", "vgg16", weights="DEFAULT")`, or
`torch.hub.load("<owner>/vggnet", "get_weight", "VGG16_Weights.IMAGENET1K_V1")` for the record.
"""

from vggnet.builders import vgg11, vgg11_bn, vgg13, vgg13_bn, vgg16, vgg16_bn, vgg19, vgg19_bn
from vggnet.weights import get_weight

# what torch.hub checks is importable before it imports this file (filelock: cache.py's download lock)
dependencies = ["torch", "numpy", "requests", "tqdm", "filelock"]

__all__ = [
    "get_weight",
    "vgg11",
    "vgg11_bn",
    "vgg13",
    "vgg13_bn",
    "vgg16",
    "vgg16_bn",
    "vgg19",
    "vgg19_bn",
]
