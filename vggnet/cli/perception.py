"""lpips, explain, features: seeing with VGG (issue 15): a perceptual distance, where the model looked, its maps."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

from vggnet.cli.args import (
    WEIGHTS_HELP,
    add_device,
    add_preset,
    add_weights,
    check_preset,
    load_model,
    model_arg,
    positive,
    run_device,
    run_preset,
    size_arg,
)
from vggnet.cli.output import print_json, print_predictions, table
from vggnet.errors import EXIT_OK, UsageError

if TYPE_CHECKING:
    import torch

    from vggnet.data.transforms import ImageClassification
    from vggnet.models.checkpoint import Loaded

# Choices whose home module imports torch, spelled here so that a bad one is answered at once;
# tests/cli/test_parsers.py keeps them equal to vggnet.seeing.explain.METHODS.
METHODS = ("gradcam",)

# --- lpips -----------------------------------------------------------------------------------------


def add_lpips(p: argparse.ArgumentParser) -> None:
    """Declare `vggnet lpips`'s description and arguments.

    The arguments: IMG1, IMG2, the trunk, --version, --lin-weights, --size, --device, --json.

    Args:
        p: the `lpips` subcommand's parser, filled in place.
    """
    p.description = (
        "LPIPS (Zhang et al. 2018) between two images of the same size (or both resized with --size): "
        "VGG16's five relu taps, unit-normalised, weighted by the LPIPS project's published linear layers "
        "(fetched once from a pinned URL, SHA-256 checked). 0 for identical images; about 0.1-0.7 for "
        "perceptibly different ones."
    )
    p.add_argument("image1", metavar="IMG1")
    p.add_argument("image2", metavar="IMG2")
    p.add_argument("--arch", type=model_arg, default="vgg16", metavar="MODEL", help="the trunk (default vgg16)")
    p.add_argument("--weights", default="DEFAULT", metavar="NAME|PATH|URL|none", help=f"the trunk's: {WEIGHTS_HELP}")
    p.add_argument("--version", choices=("0.1", "0.0"), default="0.1", help="the linear layers (default 0.1)")
    p.add_argument("--lin-weights", type=Path, metavar="FILE", help="a local copy of LPIPS' vgg.pth instead")
    p.add_argument("--size", type=size_arg, metavar="N|HxW", help="resize both images to this size first")
    add_device(p)
    p.add_argument("--json", action="store_true", help="print a JSON object")


def run_lpips(args: argparse.Namespace) -> int:
    """Print the LPIPS distance between two images (0 for identical ones).

    Args:
        args: the parsed arguments of `vggnet lpips` (see `add_lpips`).

    Returns:
        0 (`EXIT_OK`).

    Raises:
        UsageError: the images differ in size and --size was not given (exit 2).
    """
    import torch

    from vggnet.data.decode import load_image, pil_to_tensor
    from vggnet.seeing.lpips import LPIPS

    images = [load_image(path) for path in (args.image1, args.image2)]
    if args.size is not None:
        images = [img.resize((args.size[1], args.size[0]), _bilinear()) for img in images]
    sizes = [f"{img.width}x{img.height}" for img in images]
    if sizes[0] != sizes[1]:
        raise UsageError(
            f"{args.image1} is {sizes[0]} and {args.image2} is {sizes[1]} (width x height); "
            "pass --size N or --size HxW to resize both"
        )
    device = run_device(args)
    trunk = load_model(args, device, classifier=False)
    metric = LPIPS(
        trunk.model, version=args.version, input_range="0-1", lin_weights=args.lin_weights, progress=not args.quiet
    ).to(device)
    x, y = (pil_to_tensor(img).float().div(255).unsqueeze(0).to(device) for img in images)
    with torch.no_grad():
        distance = float(metric(x, y)[0])
    if args.json:
        print_json(
            {
                "image1": args.image1,
                "image2": args.image2,
                "lpips": distance,
                "version": args.version,
                "arch": trunk.arch,
                "weights": trunk.weights,
                "size": [images[0].height, images[0].width],
            }
        )
    else:
        print(f"{distance:.4f}")
    return EXIT_OK


# --- explain --------------------------------------------------------------------------------------


def add_explain(p: argparse.ArgumentParser) -> None:
    """Declare `vggnet explain`'s description and arguments.

    The arguments: IMAGE, the weights, --layer, --method, --class, --topk, --alpha, --device, --out, --json and the
    preprocessing options.

    Args:
        p: the `explain` subcommand's parser, filled in place.
    """
    p.description = (
        "Grad-CAM (computed by Captum's LayerGradCam: pip install 'vggnet[explain]') of the top "
        "class, or of --class K, at a layer (default: the last convolution, conv5_3 in vgg16), drawn in jet "
        "colours over the image as the model saw it (the weights' resize and crop) and written as a PNG; the "
        "top classes are printed."
    )
    p.add_argument("image", metavar="IMAGE")
    add_weights(p)
    p.add_argument("--layer", metavar="NAME", help="conv1_1 ... pool5 (default: the last convolution)")
    p.add_argument("--method", choices=METHODS, default="gradcam", help="default gradcam")
    p.add_argument("--class", dest="target", type=int, metavar="K", help="explain class K (default: the top class)")
    p.add_argument("--topk", type=positive, default=5, metavar="K", help="classes to list (default 5)")
    p.add_argument("--alpha", type=float, default=0.5, help="weight of the heat map over the photo (default 0.5)")
    add_device(p)
    p.add_argument("--out", type=Path, required=True, metavar="FILE.png", help="where to write the picture")
    p.add_argument("--json", action="store_true", help="print a JSON object")
    add_preset(p)


def run_explain(args: argparse.Namespace) -> int:
    """Draw the Grad-CAM heat map of the top class (or --class) over the image into --out, and print the top classes.

    Args:
        args: the parsed arguments of `vggnet explain` (see `add_explain`).

    Returns:
        0 (`EXIT_OK`).
    """
    from vggnet.data.outputs import save_png
    from vggnet.seeing.explain import explain
    from vggnet.seeing.pictures import label, overlay

    loaded, preset, x = _model_and_image(args, classifier=True)
    result = explain(
        loaded.model,
        x,
        layer=args.layer,
        target=args.target,
        topk=args.topk,
        method=args.method,
        categories=loaded.categories,
    )
    explained, top = result.explained[0], result.top[0]
    picture = overlay(_photo(x, preset), result.heatmap[0], alpha=args.alpha)
    label(picture, f"{explained.name} {explained.probability:.1%} ({result.layer})")
    save_png(picture, args.out)
    predictions = [{"index": p.index, "label": p.name, "probability": p.probability} for p in top]
    if args.json:
        print_json(
            {
                "image": args.image,
                "arch": loaded.arch,
                "weights": loaded.weights,
                "layer": result.layer,
                "method": result.method,
                "class": {"index": explained.index, "label": explained.name, "probability": explained.probability},
                "predictions": predictions,
                "out": str(args.out),
            }
        )
    else:
        print(f"{args.image}: {result.method} of {explained.name} ({explained.index}) at {result.layer}")
        print_predictions(predictions)
    if not args.quiet:
        print(f"map written to {args.out}", file=sys.stderr)
    return EXIT_OK


# --- features -------------------------------------------------------------------------------------


def add_features(p: argparse.ArgumentParser) -> None:
    """Declare `vggnet features`'s description and arguments.

    The arguments: IMAGE, the weights, --layer, --count, --tile, --columns, --device, --out, --json and the
    preprocessing options.

    Args:
        p: the `features` subcommand's parser, filled in place.
    """
    p.description = (
        "The channels of a layer with the largest mean activation for an image (after the weights' "
        "resize and crop), each drawn in jet colours from its own minimum to its maximum, labelled with its "
        "channel number, written as a PNG grid."
    )
    p.add_argument("image", metavar="IMAGE")
    add_weights(p)
    p.add_argument("--layer", metavar="NAME", help="conv1_1 ... pool5 (default: block 3's last conv, conv3_3 in vgg16)")
    p.add_argument("--count", type=positive, default=16, metavar="N", help="maps to show (default 16)")
    p.add_argument("--tile", type=positive, default=96, metavar="PX", help="tile side in pixels (default 96)")
    p.add_argument("--columns", type=positive, metavar="C", help="tiles per row (default: a near-square grid)")
    add_device(p)
    p.add_argument("--out", type=Path, required=True, metavar="FILE.png", help="where to write the grid")
    p.add_argument("--json", action="store_true", help="print a JSON object")
    add_preset(p)


def run_features(args: argparse.Namespace) -> int:
    """Draw a grid of a layer's strongest feature maps for the image into --out, and print their channels.

    Args:
        args: the parsed arguments of `vggnet features` (see `add_features`).

    Returns:
        0 (`EXIT_OK`).
    """
    from vggnet.data.outputs import save_png
    from vggnet.seeing.feature_maps import feature_maps

    loaded, _, x = _model_and_image(args, classifier=False)
    maps = feature_maps(loaded.model, x, args.layer, args.count)
    save_png(maps.grid(tile=args.tile, columns=args.columns), args.out)
    if args.json:
        print_json(
            {
                "image": args.image,
                "arch": loaded.arch,
                "weights": loaded.weights,
                "layer": maps.layer,
                "map_size": list(maps.maps.shape[1:]),
                "channels": maps.channels,
                "means": maps.means,
                "out": str(args.out),
            }
        )
    else:
        h, w = maps.maps.shape[1:]
        print(f"{args.image}: the {len(maps.channels)} strongest of {maps.layer}'s maps ({h}x{w})")
        print(table(("channel", "mean"), [(str(c), f"{m:.4f}") for c, m in zip(maps.channels, maps.means)], (0, 1)))
    if not args.quiet:
        print(f"grid written to {args.out}", file=sys.stderr)
    return EXIT_OK


# --- the pictures ---------------------------------------------------------------------------------


def _model_and_image(args: argparse.Namespace, *, classifier: bool) -> tuple[Loaded, ImageClassification, torch.Tensor]:
    """The model --weights names, its preset (the preset options applied) and IMAGE through it, on --device."""
    from vggnet.data.decode import load_image

    _check_png(args.out)
    check_preset(args, image_size=False)
    device = run_device(args)
    loaded = load_model(args, device, classifier=classifier)
    preset = run_preset(args, loaded)
    return loaded, preset, preset(load_image(args.image)).to(device)


def _check_png(path: Path) -> None:
    from vggnet.data.outputs import check_output

    if path.suffix.lower() != ".png":
        raise UsageError(f"--out {path}: the picture is written as PNG; give a file name ending in .png")
    check_output(path)  # a folder or a link at --out: refused before any weights are fetched


def _photo(x: torch.Tensor, preset: ImageClassification) -> torch.Tensor:
    """The preprocessed image back in [0, 1]: what the model saw, after the resize and crop."""
    import torch

    mean = torch.tensor(preset.mean, device=x.device).view(-1, 1, 1)
    std = torch.tensor(preset.std, device=x.device).view(-1, 1, 1)
    return (x * std + mean).clamp(0, 1).expand(3, -1, -1).cpu()


def _bilinear() -> Any:
    from PIL import Image

    return Image.Resampling.BILINEAR
