"""vggnet: the VGG family for PyTorch, standalone, with verified official checkpoints.

import vggnet
model = vggnet.vgg16(weights="DEFAULT").eval()
preprocess = vggnet.VGG16_Weights.DEFAULT.transforms()
"""

from vggnet.data.transforms import ImageClassification, TrainClassification, create_transform
from vggnet.deploy.inference import fold_batchnorm, optimize_for_inference
from vggnet.hub._cache import ChecksumError, cache_dir
from vggnet.hub._download import DownloadError
from vggnet.hub._fetching import fetch, load_state_dict_from_url
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
from vggnet.models.receptive import ReceptiveField, receptive_fields
from vggnet.models.summary import summarize
from vggnet.models.taps import layer_names, module_names
from vggnet.models.vgg import VGG, TapInfo, adapt_input_conv, make_layers
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
from vggnet.seeing.explain import Explanation, explain
from vggnet.seeing.feature_maps import FeatureMaps, feature_maps
from vggnet.seeing.losses import PerceptualLoss
from vggnet.seeing.lpips import LPIPS

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
