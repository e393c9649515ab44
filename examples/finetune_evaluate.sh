#!/usr/bin/env bash
# Fine-tune vgg11_bn from random weights on scikit-learn's digits, then evaluate, explain and predict with the
# checkpoint: the commands of the fine-tuning tutorial (docs/finetuning.md), which made its pictures.
#
#   examples/finetune_evaluate.sh [OUT]          # all 1,797 digits, 6 epochs (OUT: default digits-run)
#   examples/finetune_evaluate.sh --smoke [OUT]  # 12 digits a class, 1 epoch: what CI runs
#
# Writes OUT/digits/ (the PNG folders), OUT/run/ (best.pth, last.pth, history.jsonl), OUT/curves.png,
# OUT/confusion.png, OUT/cam.png and OUT/predictions.jsonl. Needs vggnet[image,explain] and scikit-learn.
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
epochs=6 per_class=()
if [ "${1:-}" = --smoke ]; then
    epochs=1 per_class=(--per-class 12)
    shift
fi
out="${1:-digits-run}"

# --8<-- [start:data]
# 1. the data: OUT/digits/{train,val,test}/<digit>/<n>.png, 8x8 gray
python "$here/make_digits.py" "$out/digits" "${per_class[@]}"
# --8<-- [end:data]

# --8<-- [start:finetune]
# 2. fine-tune: BatchNorm, the small "gap" head, one input channel, light crops and no flips (digits are
#    not mirror-symmetric), a one-epoch warm-up then a cosine; the curves go to curves.png
vggnet finetune "$out/digits" --arch vgg11_bn --weights none --in-chans 1 --image-size 64 \
    --mode full --head gap --augment light --no-hflip --crop-scale 0.7 1 \
    --lr 0.05 --warmup-epochs 1 --label-smoothing 0.1 --weight-decay 5e-4 \
    --epochs "$epochs" --batch-size 64 --seed 0 --out "$out/run" --overwrite --plot "$out/curves.png"
# --8<-- [end:finetune]

# --8<-- [start:evaluate]
# 3. score the best checkpoint on the held-out test images; the confusion matrix goes to confusion.png
vggnet evaluate "$out/digits/test" --weights "$out/run/best.pth" --plot "$out/confusion.png"
# --8<-- [end:evaluate]

# --8<-- [start:explain]
# 4. where the model looked for one test image (Grad-CAM at conv4_2, 8x8 at 64 px)
image="$(find "$out/digits/test/3" -name '*.png' | sort | head -n 1)"
vggnet explain "$image" --weights "$out/run/best.pth" --layer conv4_2 --topk 3 --out "$out/cam.png"
# --8<-- [end:explain]

# --8<-- [start:predict]
# 5. classify every test image into a file, one JSON line each
vggnet predict "$out/digits/test" --weights "$out/run/best.pth" --topk 1 --output "$out/predictions.jsonl"
# --8<-- [end:predict]
