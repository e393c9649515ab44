#!/usr/bin/env bash
# Makes the pictures of the fine-tuning tutorial (docs/finetuning.md) by running its commands:
# examples/finetune_evaluate.sh trains vgg11_bn on scikit-learn's digits from random weights, and its
# `vggnet finetune --plot`, `vggnet evaluate --plot` and `vggnet explain` draw the three pictures, copied
# here with the run's history and what `vggnet evaluate` printed. Offline; about half an hour on 2 busy
# CPU cores. (docs/see-inside/make.sh makes the pictures of "Seeing inside VGG".)
set -euo pipefail
docs="$(cd "$(dirname "$0")" && pwd)"
work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT
cd "$work"  # the paths the commands print are relative: digits-run/...
"$docs/../examples/finetune_evaluate.sh" digits-run
for picture in curves confusion cam; do
    cp "digits-run/$picture.png" "$docs/tutorial/$picture.png"
done
cp digits-run/run/history.jsonl "$docs/tutorial/history.jsonl"
vggnet -q evaluate digits-run/digits/test --weights digits-run/run/best.pth > "$docs/tutorial/evaluate.txt"
