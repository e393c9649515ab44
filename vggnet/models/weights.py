"""Checkpoint records: the `Weights` dataclass, one enum per builder, and `get_weight`.

Every figure in the official records comes from `weights/README.md` (torchvision's published
metadata, or computed from the layer shapes). A record only describes a file; fetching and
verifying it is `hub.py`'s job: `Weights.get_state_dict` hands it the record's URL, digest and size.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field, fields
from enum import Enum
from functools import cached_property
from importlib import resources
from types import MappingProxyType
from typing import TYPE_CHECKING, Any, TypeVar, cast, overload

from vggnet.checks import check_choice
from vggnet.data.constants import CAFFE_MEAN, CAFFE_STD, IMAGENET_MEAN, IMAGENET_STD, INTERPOLATIONS
from vggnet.data.transforms import ImageClassification
from vggnet.errors import UnknownWeightsError, UsageError, UsageTypeError
from vggnet.hub import OFFICIAL_BASE, file_name_from_url, load_weights, normalize_digest
from vggnet.models.config import MIN_SIZE

if TYPE_CHECKING:
    import torch

__all__ = [
    "IMAGENET_CATEGORIES",
    "VGG11_BN_Weights",
    "VGG11_Weights",
    "VGG13_BN_Weights",
    "VGG13_Weights",
    "VGG16_BN_Weights",
    "VGG16_Weights",
    "VGG19_BN_Weights",
    "VGG19_Weights",
    "Weights",
    "WeightsEnum",
    "get_weight",
    "weights_by_name",
    "own_member",
]

_MiB = 1 << 20


class _Categories(Sequence[str]):
    """The 1000 ImageNet class names, read from package data on first use (not on import)."""

    @cached_property
    def _names(self) -> tuple[str, ...]:
        text = resources.files("vggnet").joinpath("data/imagenet_categories.txt").read_text(encoding="utf-8")
        return tuple(line for line in text.splitlines() if line)

    @overload
    def __getitem__(self, i: int) -> str: ...
    @overload
    def __getitem__(self, i: slice) -> Sequence[str]: ...
    def __getitem__(self, i: int | slice) -> str | Sequence[str]:
        return self._names[i]

    def __len__(self) -> int:
        return len(self._names)

    def __iter__(self) -> Iterator[str]:
        return iter(self._names)

    def __repr__(self) -> str:
        return "IMAGENET_CATEGORIES"

    def __reduce__(self) -> str:
        return "IMAGENET_CATEGORIES"  # pickled by name: the one module-level instance


IMAGENET_CATEGORIES: Sequence[str] = _Categories()


@dataclass(frozen=True)
class Weights:
    """A checkpoint: where it lives, its digest, and how to use it.

    Every field but `url` and `sha256` is optional. Records are checked when made.

    Attributes:
        url: https, http, `file://` or a local path.
        sha256: the full 64-hex digest, or a hex prefix (at least 8 digits) where only that is known; the
            whole file is hashed either way.
        size: the exact byte count, when known (enforced while downloading).
        categories: the class names, in output order.
        crop_size: the evaluation crop's side in pixels.
        resize_size: the shorter side before the crop.
        mean: the normalisation's mean per channel, on the 0-1 scale.
        std: the normalisation's standard deviation per channel, on the 0-1 scale.
        interpolation: "bilinear", "bicubic" or "nearest".
        metrics: "acc@1" and "acc@5" on ImageNet-1K, in percent.
        num_params: the model's parameter count.
        min_size: the smallest input (height, width) the model takes.
        gflops: multiply-adds per 224x224 image, in billions.
        file_size: the file's size in MiB, as torchvision reports it.
        recipe: where the training recipe is described.
        docs: a note on what the weights are (torchvision's `_docs`).
        nonfinite: the state-dict key prefixes whose tensors may hold NaN or Inf (the features-only VGG16's
            classifier); anywhere else a NaN or Inf refuses the checkpoint.

    Raises:
        UsageError: a digest that is not 8 to 64 hex digits, an empty URL, a size under 1, an unknown
            interpolation, or mean and std of different lengths.
    """

    url: str
    sha256: str
    size: int | None = None
    categories: Sequence[str] | None = None
    crop_size: int = 224
    resize_size: int = 256
    mean: tuple[float, ...] = IMAGENET_MEAN
    std: tuple[float, ...] = IMAGENET_STD
    interpolation: str = "bilinear"
    metrics: Mapping[str, float] = field(default_factory=dict)
    num_params: int | None = None
    min_size: tuple[int, int] = (MIN_SIZE, MIN_SIZE)
    gflops: float | None = None
    file_size: float | None = None
    recipe: str | None = None
    docs: str | None = None
    nonfinite: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        object.__setattr__(self, "sha256", normalize_digest(self.sha256))
        if not isinstance(self.nonfinite, (tuple, list)) or not all(isinstance(p, str) and p for p in self.nonfinite):
            raise UsageError(
                f"nonfinite must be a tuple of state-dict key prefixes such as ('classifier.',), got {self.nonfinite!r}"
            )
        object.__setattr__(self, "nonfinite", tuple(self.nonfinite))
        if not self.url:
            raise UsageError("url must be an https, http or file:// URL, or a local path")
        if self.size is not None and self.size <= 0:
            raise UsageError(f"size must be a positive byte count, got {self.size}")
        check_choice("interpolation", self.interpolation, INTERPOLATIONS)
        if len(self.mean) != len(self.std):
            raise UsageError(f"mean and std need one value per channel, got {len(self.mean)} and {len(self.std)}")
        if self.categories is not None and not isinstance(self.categories, _Categories):
            object.__setattr__(self, "categories", tuple(self.categories))
        object.__setattr__(self, "metrics", MappingProxyType(dict(self.metrics)))

    def __hash__(self) -> int:
        return hash((self.url, self.sha256))

    def __reduce__(self) -> tuple[Any, ...]:
        # `metrics` is a read-only mappingproxy, which pickle refuses: rebuild the record from its fields.
        values = {f.name: getattr(self, f.name) for f in fields(self)}
        values["metrics"] = dict(self.metrics)
        return Weights, tuple(values.values())

    @property
    def file_name(self) -> str:
        """The name the file is cached under: the URL's last path segment, percent-decoded.

        A name that could be anything but a plain file in one folder ("..", separators) is a ValueError.
        """
        return file_name_from_url(self.url)

    @property
    def is_official(self) -> bool:
        """True for files published under download.pytorch.org/models (what VGGNET_MIRROR replaces)."""
        return self.url.startswith(OFFICIAL_BASE)

    @property
    def full_digest(self) -> bool:
        """Whether `sha256` is the full digest rather than a prefix."""
        return len(self.sha256) == 64

    @property
    def meta(self) -> dict[str, Any]:
        """torchvision's metadata keys, so code written against its records runs unchanged."""
        return {
            "categories": None if self.categories is None else list(self.categories),
            "num_params": self.num_params,
            "min_size": self.min_size,
            "_metrics": {"ImageNet-1K": dict(self.metrics)} if self.metrics else {},
            "_ops": self.gflops,
            "_file_size": self.file_size,
            "recipe": self.recipe,
            "_docs": self.docs,
        }

    def transforms(self) -> ImageClassification:
        """The evaluation preset these weights expect.

        Returns:
            A new `ImageClassification` with this record's sizes, mean, std and interpolation.
        """
        return ImageClassification(
            crop_size=self.crop_size,
            resize_size=self.resize_size,
            mean=self.mean,
            std=self.std,
            interpolation=self.interpolation,
        )

    def get_state_dict(
        self, progress: bool = True, map_location: str | torch.device | None = None, *, check_hash: bool = True
    ) -> dict[str, torch.Tensor]:
        """Fetch (or find in the cache), verify and load the checkpoint with weights_only=True.

        Args:
            progress: show a progress bar while downloading.
            map_location: where the tensors go (as torch.load's); default the CPU.
            check_hash: taken for torchvision's callers; the file is verified whatever its value.

        Returns:
            The state dict.

        Raises:
            ChecksumError: the file is not the one the digest names; nothing is kept.
            DownloadError: the download failed for good.
            NotCachedError: offline (`VGGNET_OFFLINE`) and not cached or mirrored.
        """
        return load_weights(
            self.url,
            sha256=self.sha256,
            size=self.size,
            max_size=self.max_size,
            progress=progress,
            map_location=map_location,
        )

    @property
    def max_size(self) -> int | None:
        """An upper bound on the file's bytes when only torchvision's MiB figure is known (official files)."""
        if self.size is not None or self.file_size is None or not self.is_official:
            return None
        return int(self.file_size * _MiB) + 1024  # torchvision's MiB figure is rounded to 3 decimals


_Member = TypeVar("_Member", bound="WeightsEnum")


class WeightsEnum(Enum):
    """Base of the per-builder enums; members delegate the record's attributes.

    As torchvision's members: `repr` and `str` are "VGG16_Weights.IMAGENET1K_V1", `verify` normalises
    a builder's argument, and a member pickles (and deep-copies) to itself, by name.
    """

    value: Weights

    def __reduce_ex__(self, protocol: object) -> tuple[Any, ...]:
        # By name, not Enum's by value: unpickling by value needs an equal record, and NaN metrics
        # (IMAGENET1K_FEATURES) never compare equal; by name, a loaded member `is` the defined one.
        return getattr, (type(self), self._name_)

    @classmethod
    def verify(cls: type[_Member], obj: object) -> _Member | None:
        """None, a member, or its name ("DEFAULT", "VGG16_Weights.DEFAULT") -> None or the member, as torchvision.

        Args:
            obj: what a builder's `weights` received; torchvision's own member for the same file is taken too
                (matched by URL).

        Returns:
            None for None, else this enum's member.

        Raises:
            UnknownWeightsError: (a KeyError, torchvision's type) an unknown name.
            UsageTypeError: (a TypeError, torchvision's type) anything else: another enum's member, a number.
        """
        if obj is None:
            return None
        if type(obj) is str:
            return cast(_Member, weights_by_name(obj, enum=cls))
        member = own_member(obj)
        if not isinstance(member, cls):
            raise UsageTypeError(
                f"expected weights of {cls.__name__} (None, a member or its name: {_member_names(cls)}), "
                f"got {_describe(obj)}"
            )
        return member

    @property
    def url(self) -> str:
        """The record's URL."""
        return self.value.url

    @property
    def meta(self) -> dict[str, Any]:
        """The record's metadata under torchvision's keys (`categories`, `num_params`, `_metrics`, ...)."""
        return self.value.meta

    def transforms(self) -> ImageClassification:
        """The evaluation preset these weights expect.

        Returns:
            A new `ImageClassification` with the record's sizes, mean, std and interpolation.
        """
        return self.value.transforms()

    def get_state_dict(
        self, progress: bool = True, map_location: str | torch.device | None = None, *, check_hash: bool = True
    ) -> dict[str, torch.Tensor]:
        """The verified state dict, from the cache or downloaded (see `Weights.get_state_dict`).

        Args:
            progress: show a progress bar while downloading.
            map_location: where the tensors go (as torch.load's); default the CPU.
            check_hash: taken for torchvision's callers; vggnet always verifies.

        Returns:
            The state dict.
        """
        return self.value.get_state_dict(progress=progress, map_location=map_location, check_hash=check_hash)

    def __repr__(self) -> str:
        return f"{type(self).__name__}.{self._name_}"

    def __str__(self) -> str:
        return f"{type(self).__name__}.{self._name_}"

    @classmethod
    def from_name(cls, name: str) -> WeightsEnum:
        """The member "DEFAULT", "IMAGENET1K_V1" or "VGG16_Weights.IMAGENET1K_V1" names in this enum.

        Args:
            name: the member's name, with or without this enum's name before it.

        Returns:
            The member.

        Raises:
            UnknownWeightsError: no member of this enum has that name (a KeyError and a ValueError).
        """
        return weights_by_name(name, enum=cls)


_RECIPE = "https://github.com/pytorch/vision/tree/main/references/classification#alexnet-and-vgg"
_DOCS = "These weights were trained from scratch by using a simplified training recipe."


def _imagenet(
    file: str,
    *,
    sha256: str,
    num_params: int,
    acc1: float,
    acc5: float,
    gflops: float,
    mib: float,
    size: int | None = None,
) -> Weights:
    return Weights(
        url=OFFICIAL_BASE + file,
        sha256=sha256,
        size=size,
        categories=IMAGENET_CATEGORIES,
        metrics={"acc@1": acc1, "acc@5": acc5},
        num_params=num_params,
        gflops=gflops,
        file_size=mib,
        recipe=_RECIPE,
        docs=_DOCS,
    )


# fmt: off
class VGG11_Weights(WeightsEnum):
    """vgg11's checkpoints: IMAGENET1K_V1 (torchvision's ImageNet-1K weights), also DEFAULT."""

    IMAGENET1K_V1 = _imagenet("vgg11-8a719046.pth", sha256="8a719046", num_params=132_863_336,
                              acc1=69.020, acc5=88.628, gflops=7.609, mib=506.840)
    DEFAULT = IMAGENET1K_V1


class VGG11_BN_Weights(WeightsEnum):
    """vgg11_bn's checkpoints: IMAGENET1K_V1 (torchvision's ImageNet-1K weights), also DEFAULT."""

    IMAGENET1K_V1 = _imagenet("vgg11_bn-6002323d.pth", sha256="6002323d", num_params=132_868_840,
                              acc1=70.370, acc5=89.810, gflops=7.609, mib=506.881)
    DEFAULT = IMAGENET1K_V1


class VGG13_Weights(WeightsEnum):
    """vgg13's checkpoints: IMAGENET1K_V1 (torchvision's ImageNet-1K weights), also DEFAULT."""

    IMAGENET1K_V1 = _imagenet("vgg13-19584684.pth", sha256="19584684", num_params=133_047_848,
                              acc1=69.928, acc5=89.246, gflops=11.308, mib=507.545)
    DEFAULT = IMAGENET1K_V1


class VGG13_BN_Weights(WeightsEnum):
    """vgg13_bn's checkpoints: IMAGENET1K_V1 (torchvision's ImageNet-1K weights), also DEFAULT."""

    IMAGENET1K_V1 = _imagenet("vgg13_bn-abd245e5.pth", sha256="abd245e5", num_params=133_053_736,
                              acc1=71.586, acc5=90.374, gflops=11.308, mib=507.590)
    DEFAULT = IMAGENET1K_V1


class VGG16_Weights(WeightsEnum):
    """vgg16's checkpoints: IMAGENET1K_V1 (torchvision's ImageNet-1K weights, also DEFAULT) and IMAGENET1K_FEATURES.

    IMAGENET1K_FEATURES (ported from the SSD project) holds valid `features` only: its classifier is NaN,
    it has no categories, and its preset expects Caffe-style input (0-255 pixels minus the means).
    """

    IMAGENET1K_V1 = _imagenet("vgg16-397923af.pth", num_params=138_357_544,
                              sha256="397923af8e79cdbb6a7127f12361acd7a2f83e06b05044ddf496e83de57a5bf0",
                              size=553_433_881, acc1=71.592, acc5=90.382, gflops=15.470, mib=527.796)
    # Ported from the SSD project: only `features` holds usable values, the classifier is NaN.
    IMAGENET1K_FEATURES = Weights(
        url=OFFICIAL_BASE + "vgg16_features-amdegroot-88682ab5.pth",
        sha256="88682ab5",
        categories=None,
        nonfinite=("classifier.",),  # fc6 and fc7 hold NaN: refused anywhere else
        mean=CAFFE_MEAN,
        std=CAFFE_STD,
        metrics={"acc@1": float("nan"), "acc@5": float("nan")},  # as torchvision: no classifier to measure
        num_params=138_357_544,
        gflops=15.470,
        file_size=527.802,
        recipe="https://github.com/amdegroot/ssd.pytorch#training-ssd",
        docs="These weights can't be used for classification because they are missing values in the "
        "`classifier` module. Only the `features` module has valid values and can be used for feature "
        "extraction. The weights were trained using the original input standardization method as "
        "described in the paper.",
    )
    DEFAULT = IMAGENET1K_V1


class VGG16_BN_Weights(WeightsEnum):
    """vgg16_bn's checkpoints: IMAGENET1K_V1 (torchvision's ImageNet-1K weights), also DEFAULT."""

    IMAGENET1K_V1 = _imagenet("vgg16_bn-6c64b313.pth", num_params=138_365_992,
                              sha256="6c64b3138f2f4fcb3bcc4cafde11619c4f440eb1631787e93a682fd88305888a",
                              acc1=73.360, acc5=91.516, gflops=15.470, mib=527.866)
    DEFAULT = IMAGENET1K_V1


class VGG19_Weights(WeightsEnum):
    """vgg19's checkpoints: IMAGENET1K_V1 (torchvision's ImageNet-1K weights), also DEFAULT."""

    IMAGENET1K_V1 = _imagenet("vgg19-dcbb9e9d.pth", sha256="dcbb9e9d", size=574_673_361,
                              num_params=143_667_240, acc1=72.376, acc5=90.876, gflops=19.632, mib=548.051)
    DEFAULT = IMAGENET1K_V1


class VGG19_BN_Weights(WeightsEnum):
    """vgg19_bn's checkpoints: IMAGENET1K_V1 (torchvision's ImageNet-1K weights), also DEFAULT."""

    IMAGENET1K_V1 = _imagenet("vgg19_bn-c79401a0.pth", sha256="c79401a0", size=574_769_405,
                              num_params=143_678_248, acc1=74.218, acc5=91.842, gflops=19.632, mib=548.143)
    DEFAULT = IMAGENET1K_V1
# fmt: on

# builder name -> its enum
WEIGHTS_ENUMS: Mapping[str, type[WeightsEnum]] = MappingProxyType(
    {
        "vgg11": VGG11_Weights,
        "vgg11_bn": VGG11_BN_Weights,
        "vgg13": VGG13_Weights,
        "vgg13_bn": VGG13_BN_Weights,
        "vgg16": VGG16_Weights,
        "vgg16_bn": VGG16_BN_Weights,
        "vgg19": VGG19_Weights,
        "vgg19_bn": VGG19_BN_Weights,
    }
)
_BY_ENUM_NAME = {cls.__name__: cls for cls in WEIGHTS_ENUMS.values()}


def weights_by_name(name: str, *, arch: str | None = None, enum: type[WeightsEnum] | None = None) -> WeightsEnum:
    """The record a weights name means: the one place a name is resolved, and the one error for an unknown one.

    Args:
        name: "VGG16_Weights.IMAGENET1K_V1" (which names its enum), or a member's name alone ("DEFAULT",
            "IMAGENET1K_V1"), looked up in `enum`, else in `arch`'s enum, else in vgg16's.
        arch: the builder whose enum a name alone is looked up in.
        enum: the enum the member must belong to (a name of another enum is then unknown, as in torchvision).

    Returns:
        The member.

    Raises:
        UnknownWeightsError: the name is no member's; the message lists the valid names (a KeyError, as
            torchvision's `verify` raises, and a ValueError, as its `get_weight` does).
    """
    enums = WEIGHTS_ENUMS  # the module global, read at call time: tests stand in their own records
    enum_name, dot, short = name.partition(".")
    if enum is not None:
        chosen: type[WeightsEnum] | None = enum
        short = short if dot and enum_name == enum.__name__ else name
    elif dot:
        chosen = next((e for e in enums.values() if e.__name__ == enum_name), None)
    else:
        chosen = enums.get(arch or "vgg16")
        short = name
    if chosen is None or short not in chosen.__members__:
        where = f" for {chosen.__name__}" if chosen is not None else ""
        valid = _member_names(chosen) if chosen is not None else ", ".join(_member_names(e) for e in enums.values())
        raise UnknownWeightsError(f"unknown weights {name!r}{where}; valid: {valid}")
    return chosen.__members__[short]


def get_weight(name: str) -> WeightsEnum:
    """The member named like "VGG16_Weights.IMAGENET1K_V1" (torchvision's function of the same name).

    Args:
        name: the enum's name, a dot and the member's name.

    Returns:
        The member.

    Raises:
        UnknownWeightsError: no such enum or member; the message lists the valid names.
    """
    if "." not in name:
        valid = ", ".join(_member_names(e) for e in WEIGHTS_ENUMS.values())
        raise UnknownWeightsError(
            f"unknown weights {name!r}: give the enum's name too, e.g. VGG16_Weights.DEFAULT; valid: {valid}"
        )
    return weights_by_name(name)


def _member_names(enum: type[WeightsEnum]) -> str:
    return ", ".join(f"{enum.__name__}.{name}" for name in enum.__members__)


def _describe(obj: object) -> str:
    return repr(obj) if isinstance(obj, Enum) else type(obj).__name__


def own_member(obj: object) -> object:
    """vggnet's member for torchvision's (any enum member whose `url` is one of vggnet's records); else `obj`.

    Matched by URL, so torchvision is never imported.

    Args:
        obj: anything a `weights` argument received.

    Returns:
        vggnet's member for an enum member of another library with one of vggnet's URLs; else `obj` itself.

    Raises:
        UsageTypeError: (a TypeError, as torchvision's `verify` raises for another model's member) an enum
            member with a URL vggnet has no record of.
    """
    if isinstance(obj, WeightsEnum) or not isinstance(obj, Enum):
        return obj
    url = getattr(obj, "url", None) or getattr(obj.value, "url", None)
    if not isinstance(url, str):
        return obj
    for enum in WEIGHTS_ENUMS.values():
        for member in enum:  # aliases (DEFAULT) are skipped: they share their record's member
            if member.url == url:
                return member
    official = ", ".join(str(m) for enum in WEIGHTS_ENUMS.values() for m in enum)
    raise UsageTypeError(
        f"{obj!r} ({url}) has no vggnet record; vggnet knows {official}. To load that file anyway, pass "
        f"vggnet.Weights(url=..., sha256=...) with its URL and SHA-256"
    )
