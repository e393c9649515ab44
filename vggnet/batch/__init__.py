"""A model over many images: predict, evaluate and embed, streamed, resumable, shared out under torchrun.

- `engine`: the device and rank a run has, the data loading, the logits or features of a batch.
- `output`: line-per-image outputs (JSON Lines or CSV), resumed and merged across ranks (no torch).
- `predict`, `evaluate`, `embed`: the three jobs (`predict_images`, `evaluate`, `embed_images`).
"""
