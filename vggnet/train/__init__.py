"""Fine-tuning on your own labelled folders: the settings of a run, the loop, and the run folder it writes.

- `finetune`: `FinetuneConfig` and `finetune`, the loop that ties the parts together.
- `trainers`: the two ways a run trains (a linear probe on cached features, or the whole network).
- `runs`: the run folder (`best.pth`, `last.pth`, `history.jsonl`), written safely and read back.
"""
