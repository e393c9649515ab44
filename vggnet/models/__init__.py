"""The models: VGG as the paper's table, the network, its named layers, the official records and the builders.

Bottom up (each module imports only those above it in this list, and the store `vggnet.hub`):

- `config`: Table 1 as data (`CONFIGS`, `ARCHS`), the heads, the rules of a weights argument; no torch.
- `vgg`: `make_layers` and `VGG`, the network with its heads and training helpers.
- `taps`: the paper's name of every layer and the taps that read a batch out at any of them.
- `interop`: what torchvision's and timm's tools read off a model (FX node names) and `register_timm`, which
  puts the builders in timm's registry by importing `_timm` when called (the one import upward, on request).
- `weights`: the `Weights` records, one enum per builder, `weights_by_name`.
- `layouts`: what the keys of a weights file mean (vggnet's, timm's, Keras') and turning each into vggnet's.
- `sources`, `state_dicts`, `finetuned`: what a weights argument names, what a state dict must hold, what a
  fine-tuned checkpoint holds.
- `checkpoint`: `load`, any weights source -> a model, its preset and its classes.
- `builders`: `vgg11` ... `vgg19_bn` and the registry (`list_models`, `get_model`, `get_model_weights`).
- `receptive`, `summary`: receptive fields and the per-layer summary, on the meta device.
- `_timm`: the builders as timm's model entrypoints (needs timm; `interop.register_timm` imports it).

The usual names are importable from `vggnet` itself.
"""
