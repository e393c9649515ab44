"""The numbers preprocessing is made of: normalisations, interpolations and the largest sizes accepted.

One definition each, shared by the presets (`vggnet.data.transforms`), the weight records, the losses,
the exported models and the command line's checks. This module imports nothing, so the command line
checks its arguments without importing torch.
"""

from __future__ import annotations

from typing import Final

RGB: Final = 3  # channels of a colour image; the presets' means and stds have one value each

IMAGENET_MEAN: Final = (0.485, 0.456, 0.406)
IMAGENET_STD: Final = (0.229, 0.224, 0.225)
# Caffe-style input for the SSD-ported vgg16 features: 0-255 scale minus the channel means.
CAFFE_MEAN: Final = (0.48235, 0.45882, 0.40784)
CAFFE_STD: Final = (1 / 255, 1 / 255, 1 / 255)
# Keras' VGG16/VGG19 preprocess_input ("caffe" mode) subtracts the BGR means (103.939, 116.779, 123.68) on the
# 0-255 scale; here in RGB order and on the 0-1 scale of vggnet's presets, with std 1/255 to undo the scaling.
KERAS_MEAN: Final = (123.68 / 255, 116.779 / 255, 103.939 / 255)
KERAS_STD: Final = (1 / 255, 1 / 255, 1 / 255)
INTERPOLATIONS: Final = ("nearest", "bilinear", "bicubic")

# The largest crop (`--image-size`, a preset's crop_size): vgg16 at 1024x1024 keeps 1.2 GiB of fp32
# activations per image (`vggnet summary vgg16 --input-size 1024`), 21x the 224 figure; 2048 would be 4.7 GiB.
MAX_SIZE: Final = 1024
MAX_RESIZE: Final = round(MAX_SIZE * 256 / 224)  # 1170: the shorter side `--image-size 1024` resizes to
