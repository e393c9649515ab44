"""embed_images and read_embeddings: shards, the index, pooling and normalisation, resume after a crash."""

import numpy as np
import pytest
import torch

from tests.helpers import PRESET, bad_paths, read_jsonl, readable, small_model
from vggnet.batch.embed import embed_images, read_embeddings
from vggnet.data.decode import load_image


@pytest.mark.slow
def test_embed_writes_shards_and_an_index_and_resumes(photos, tmp_path):
    model = small_model()
    out = tmp_path / "emb"
    summary = embed_images(
        model, PRESET, [photos], out, layer="pool5", pool=True, normalize=True, shard_size=5, workers=0, progress=False
    )
    assert (summary.images, summary.failed, summary.dim) == (18, 2, 512)
    assert sorted(p.name for p in out.glob("*.npy")) == [f"features-00000{i}.npy" for i in range(4)]  # 16 rows
    paths, rows = read_embeddings(out)
    good = readable(photos)
    assert sorted(paths) == [str(p) for p in good] and rows.shape == (16, 512) and rows.dtype == np.float32
    with torch.inference_mode():
        x = torch.stack([PRESET(load_image(p)) for p in paths])
        want = torch.nn.functional.normalize(model.extract(x, "pool5")["pool5"].mean((2, 3)), dim=1)
    np.testing.assert_allclose(rows, want.numpy(), atol=1e-5)
    assert np.allclose(np.linalg.norm(rows, axis=1), 1)
    index = read_jsonl(out / "index.jsonl")
    assert {r["image"] for r in index if "error" in r} == bad_paths(photos)

    # a run killed after two shards: its index holds their rows; a third shard was written but not indexed
    lines = (out / "index.jsonl").read_text().splitlines(keepends=True)
    cut = max(i for i, line in enumerate(lines) if '"features-000001.npy"' in line) + 1
    (out / "index.jsonl").write_text("".join(lines[:cut]) + lines[cut][:10])
    (out / "features-000003.npy").unlink()
    resumed = embed_images(
        model, PRESET, [photos], out, layer="pool5", pool=True, normalize=True, shard_size=5, workers=0,
        resume=True, progress=False,
    )  # fmt: skip
    assert resumed.skipped == cut and resumed.images == 18 - cut
    paths2, rows2 = read_embeddings(out)
    assert sorted(paths2) == sorted(paths)
    order = {p: i for i, p in enumerate(paths)}
    np.testing.assert_allclose(rows2, rows[[order[p] for p in paths2]], atol=1e-5)
    with pytest.raises(ValueError, match="holds embeddings made with"):
        embed_images(model, PRESET, [photos], out, layer="fc7", resume=True, progress=False)

    fc7 = embed_images(model, PRESET, [photos], tmp_path / "fc7", layer="fc7", workers=0, progress=False)
    assert fc7.dim == 4096
    with pytest.raises(ValueError, match="no layer 'fc9'; valid: conv1_1"):
        embed_images(model, PRESET, [photos], tmp_path / "bad", layer="fc9", progress=False)
