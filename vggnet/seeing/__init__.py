"""Seeing with VGG: perceptual distances and losses, where a model looked, what a layer responds to.

- `losses`: `PerceptualLoss` (content and Gram-matrix style terms).
- `lpips`: `LPIPS`, the learned perceptual image patch similarity on a vggnet VGG16 trunk.
- `explain`: Grad-CAM maps with the top classes named (Captum).
- `feature_maps`: a layer's strongest feature maps as a grid of tiles.
- `pictures`: colour maps, overlays and labelled grids (Pillow only).
"""
