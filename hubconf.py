"""torch.hub entry points: the eight builders (from the registry) and `get_weight`.

For example `torch.hub.load("<owner>/vggnet", "vgg16", weights="DEFAULT")`, or
`torch.hub.load("<owner>/vggnet", "get_weight", "VGG16_Weights.IMAGENET1K_V1")` for the record.
"""

from vggnet.models.builders import BUILDERS
from vggnet.models.weights import get_weight

# what torch.hub checks is importable before it imports this file (filelock: locks.py's download lock)
dependencies = ["torch", "numpy", "requests", "tqdm", "filelock"]

globals().update(BUILDERS)  # vgg11 ... vgg19_bn, the names torch.hub.list shows

__all__ = [*BUILDERS, "get_weight"]
