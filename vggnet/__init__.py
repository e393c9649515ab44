"""vggnet: the VGG family for PyTorch, standalone, with verified official checkpoints.

import vggnet
model = vggnet.vgg16(weights="DEFAULT").eval()
preprocess = vggnet.VGG16_Weights.DEFAULT.transforms()
"""

from .builders import (
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
from .cache import ChecksumError, cache_dir
from .download import DownloadError
from .explain import Explanation, explain
from .feature_maps import FeatureMaps, feature_maps
from .hub import fetch, load_state_dict_from_url
from .inference import fold_batchnorm, optimize_for_inference
from .losses import PerceptualLoss
from .lpips import LPIPS
from .model import VGG, TapInfo, adapt_input_conv, make_layers
from .receptive import ReceptiveField, receptive_fields
from .summary import summarize
from .taps import layer_names, module_names
from .transforms import ImageClassification, TrainClassification, create_transform
from .weights import (
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

__version__ = "0.1.0"

__all__ = [
    "ChecksumError",
    "DownloadError",
    "cache_dir",
    "explain",
    "feature_maps",
    "fetch",
    "load_state_dict_from_url",
    "VGG",
    "VGG11_BN_Weights",
    "VGG11_Weights",
    "VGG13_BN_Weights",
    "VGG13_Weights",
    "VGG16_BN_Weights",
    "VGG16_Weights",
    "VGG19_BN_Weights",
    "VGG19_Weights",
    "Explanation",
    "FeatureMaps",
    "ImageClassification",
    "LPIPS",
    "PerceptualLoss",
    "ReceptiveField",
    "TapInfo",
    "TrainClassification",
    "Weights",
    "WeightsEnum",
    "__version__",
    "fold_batchnorm",
    "get_model",
    "get_model_weights",
    "get_weight",
    "layer_names",
    "list_models",
    "module_names",
    "adapt_input_conv",
    "make_layers",
    "optimize_for_inference",
    "receptive_fields",
    "summarize",
    "vgg11",
    "vgg11_bn",
    "vgg13",
    "vgg13_bn",
    "vgg16",
    "vgg16_bn",
    "vgg19",
    "vgg19_bn",
    "create_transform",
]
