#!/bin/sh
# Makes the pictures of docs/seeing.md ("Seeing inside VGG") from a bundled photo, with the commands it shows.
# WEIGHTS=DEFAULT (the official vgg16 checkpoint: needs it downloaded or a VGGNET_MIRROR) or none
# (untrained weights, as the committed pictures were made offline).
set -e
cd "$(dirname "$0")/../.."
weights=${WEIGHTS:-DEFAULT}
photo=tests/photos/chelsea.png
vggnet -q summary vgg16 --plot docs/see-inside/summary.svg >/dev/null
vggnet -q features "$photo" --arch vgg16 --weights "$weights" --layer conv3_3 --count 12 --tile 80 \
    --out docs/see-inside/features.png >/dev/null
vggnet -q explain "$photo" --arch vgg16 --weights "$weights" --out docs/see-inside/cam.png >/dev/null
