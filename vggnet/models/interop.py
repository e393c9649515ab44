"""What torchvision's and timm's tools read off a model or ask of it: FX node names for the paper's layer
names (issue 12), and vggnet's models in timm's registry (`register_timm`, issue 25).

timm's `pretrained_cfg` dict of a model is `vggnet.models.vgg.pretrained_cfg`'s (the model sets its own).
"""

from __future__ import annotations

from vggnet.checks import check_choice
from vggnet.errors import MissingDependency
from vggnet.models.config import HEADS
from vggnet.models.taps import GAP_HEAD_NAMES, HEAD_NAMES, feature_names

__all__ = ["node_names", "register_timm"]


def node_names(arch: str, head: str = "vgg") -> dict[str, str]:
    """Paper name -> torchvision node name for `arch`: {"conv1_1": "features.0", ..., "fc8": "classifier.6"}.

    These are the names `torchvision.models.feature_extraction.create_feature_extractor` takes and
    the state-dict prefixes; they hold for torchvision's own VGG too.

    Args:
        arch: a builder name ("vgg16_bn").
        head: "vgg" or "fc7" (avgpool, fc6 ... fc8), or "gap" (gap: "avgpool", fc: "classifier.0").

    Returns:
        name -> node name, in forward order.

    Raises:
        UsageError: an unknown arch or head (a ValueError).
    """
    check_choice("head", head, HEADS)
    names = {name: f"features.{i}" for i, name in enumerate(feature_names(arch))}
    after = GAP_HEAD_NAMES if head == "gap" else HEAD_NAMES
    names[after[0]] = "avgpool"
    return names | {name: f"classifier.{i}" for i, name in enumerate(after[1:])}


def register_timm() -> list[str]:
    """Register vggnet's eight models in timm's registry; their names, "vggnet_vgg11" ... "vggnet_vgg19_bn".

    Then `timm.create_model("vggnet_vgg16")` builds `vggnet.vgg16` through timm's `build_model_with_cfg`:
    timm's `num_classes`, `in_chans`, `global_pool`, `features_only` (timm's feature wrappers, `feature_cls`
    included), `device`, `dtype` and `pretrained_cfg` arguments apply, and `pretrained=True` loads vggnet's
    verified DEFAULT weights (torchvision's, byte for byte). Calling it again changes nothing.

    Returns:
        The registered names, in the paper's order.

    Raises:
        MissingDependency: timm is not installed (pip install timm).
    """
    try:
        import timm  # noqa: F401  # the registry below needs it; said here, before vggnet's module is imported
    except ImportError as err:
        raise MissingDependency(f"register_timm needs timm ({err}); install it with: pip install timm") from err
    import vggnet.models._timm as entrypoints  # importing it registers them

    return list(entrypoints.NAMES)
