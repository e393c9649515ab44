"""Deployment: faster inference, int8 on CPUs, files that run without vggnet, weights in other formats.

- `inference`: `fold_batchnorm` and `optimize_for_inference` (channels_last, fused oneDNN calls, compiled).
- `quantize`: static int8 on CPUs (PT2E with torchao's x86 Inductor quantizer), checked against float32.
- `packed`: `PackedModel`, the base of both: refuses what would leave their packed weights behind (`.half()`,
  `load_state_dict`, pickling), with the fix.
- `winograd`: Winograd F(4x4, 3x3) for the float32 CPU convolutions where it pays (vgg16's from conv3_1 on).
- `onednn_graph`: the oneDNN Graph programs an optimized model runs its batches of `batch_size` as (CPU).
- `onednn`: the converted int8 graph run as direct calls to oneDNN's int8 operators (what `quantize` returns runs).
- `torchscript`: such a program written out as one TorchScript function, which runs it without Python between calls.
- `huge_pages`: the weights a program packs once moved into transparent huge pages (Linux), best effort.
- `export`: ONNX, torch.export (pt2), AOTInductor and TorchScript artifacts, checked against eager.
- `convert`: weights from any source written as safetensors or PyTorch zip, in vggnet's or timm's layout.
- `bench`: interleaved timing against torchvision (what `vggnet bench` and benchmarks/ use).
"""
