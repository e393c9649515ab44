"""Data in: image files decoded and checked, the presets that turn them into tensors, folders of them, shares per rank.

- `constants`: the normalisations, interpolations and largest sizes (no torch).
- `decode`: one image file -> checked pixels (Pillow behind a pixel budget).
- `transforms`: the presets (`ImageClassification`, `TrainClassification`, `create_transform`).
- `images`: which files to read (lists, globs, labelled folders) and the datasets that decode them in workers.
- `distributed`: the process group under torchrun, shared by training and the batch commands.

`imagenet_categories.txt` and `imagenet_synsets.txt` are the 1000 ImageNet class names and synsets.
"""
