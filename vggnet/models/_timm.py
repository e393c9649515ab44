"""vggnet's eight models in timm's registry, registered as timm's own model files register theirs.

Imported by `interop.register_timm` (what users call): importing this module is the registration, once per
process. Each entrypoint goes through timm's `build_model_with_cfg` with vggnet's builder as the model class, so
timm's arguments and wrappers apply (`features_only` with its `feature_cls`, `pretrained_cfg`, `device`, `dtype`).
`pretrained=True` loads vggnet's verified DEFAULT weights through the builder; timm's own loader is not used.
"""

from __future__ import annotations

from typing import Any

import torch
from timm.models import build_model_with_cfg, generate_default_cfgs, register_model

from vggnet.models.builders import BUILDERS
from vggnet.models.vgg import VGG, pretrained_cfg
from vggnet.models.weights import WEIGHTS_ENUMS

PREFIX = "vggnet_"
NAMES = tuple(PREFIX + arch for arch in BUILDERS)

# timm reads `default_cfgs` off the module of each entrypoint it registers: the DEFAULT record of each builder
default_cfgs = generate_default_cfgs(
    {PREFIX + arch: pretrained_cfg(WEIGHTS_ENUMS[arch].from_name("DEFAULT").value) for arch in BUILDERS}
)


def _builder(arch: str, pretrained: bool) -> Any:
    """The model class `build_model_with_cfg` calls: vggnet's builder, with timm's `dtype` and `drop_rate`."""

    def build(*, dtype: torch.dtype | None = None, drop_rate: float | None = None, **kwargs: Any) -> VGG:
        if drop_rate is not None:
            kwargs["dropout"] = drop_rate
        model = BUILDERS[arch](weights="DEFAULT" if pretrained else None, **kwargs)
        return model if dtype is None else model.to(dtype)

    return build


def _create(arch: str, pretrained: bool, kwargs: dict[str, Any]) -> VGG:
    # timm's VGG features: the six stages of `VGG.feature_info`, from `features` flattened (features.N -> features_N)
    feature_cfg = {"flatten_sequential": True, "out_indices": (0, 1, 2, 3, 4, 5)}
    model: VGG = build_model_with_cfg(
        _builder(arch, pretrained), PREFIX + arch, pretrained=False, feature_cfg=feature_cfg, **kwargs
    )
    return model


@register_model
def vggnet_vgg11(pretrained: bool = False, **kwargs: Any) -> VGG:
    """vggnet.vgg11 through timm: timm.create_model("vggnet_vgg11")."""
    return _create("vgg11", pretrained, kwargs)


@register_model
def vggnet_vgg11_bn(pretrained: bool = False, **kwargs: Any) -> VGG:
    """vggnet.vgg11_bn through timm."""
    return _create("vgg11_bn", pretrained, kwargs)


@register_model
def vggnet_vgg13(pretrained: bool = False, **kwargs: Any) -> VGG:
    """vggnet.vgg13 through timm."""
    return _create("vgg13", pretrained, kwargs)


@register_model
def vggnet_vgg13_bn(pretrained: bool = False, **kwargs: Any) -> VGG:
    """vggnet.vgg13_bn through timm."""
    return _create("vgg13_bn", pretrained, kwargs)


@register_model
def vggnet_vgg16(pretrained: bool = False, **kwargs: Any) -> VGG:
    """vggnet.vgg16 through timm."""
    return _create("vgg16", pretrained, kwargs)


@register_model
def vggnet_vgg16_bn(pretrained: bool = False, **kwargs: Any) -> VGG:
    """vggnet.vgg16_bn through timm."""
    return _create("vgg16_bn", pretrained, kwargs)


@register_model
def vggnet_vgg19(pretrained: bool = False, **kwargs: Any) -> VGG:
    """vggnet.vgg19 through timm."""
    return _create("vgg19", pretrained, kwargs)


@register_model
def vggnet_vgg19_bn(pretrained: bool = False, **kwargs: Any) -> VGG:
    """vggnet.vgg19_bn through timm."""
    return _create("vgg19_bn", pretrained, kwargs)


__all__ = ["NAMES", "PREFIX", "default_cfgs", *NAMES]
