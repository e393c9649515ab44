"""embed_images and read_embeddings: shards, the index, pooling and normalisation, resume after a crash."""

import hashlib
import os

import numpy as np
import pytest
import torch

from tests.helpers import PRESET, bad_paths, read_jsonl, readable, small_model
from vggnet.batch.embed import _check_settings, check_folder, embed_images, read_embeddings
from vggnet.data.decode import load_image
from vggnet.errors import OutputPathError


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


# --- issue 24: shards checked on resume, damaged files named, nothing replaced unasked -------------------


def by_path(out):
    paths, rows = read_embeddings(out)
    return {p: rows[i] for i, p in enumerate(paths)}


@pytest.mark.slow
def test_a_cut_or_changed_shard_is_found_on_resume_and_its_images_embedded_again(photos, tmp_path, caplog):
    model, out = small_model(), tmp_path / "emb"
    settings = dict(layer="pool5", pool=True, shard_size=5, workers=0, progress=False)
    embed_images(model, PRESET, [photos], out, **settings)
    want = by_path(out)
    index = read_jsonl(out / "index.jsonl")
    for r in index:
        if "shard" in r:  # each line records its shard's size and digest, as the file is
            assert r["shard_bytes"] == (out / r["shard"]).stat().st_size
            assert r["shard_sha256"] == hashlib.sha256((out / r["shard"]).read_bytes()).hexdigest()
    cut, changed = out / "features-000001.npy", out / "features-000002.npy"
    cut.write_bytes(cut.read_bytes()[:-7])  # a shard cut short
    raw = bytearray(changed.read_bytes())
    raw[-1] ^= 1  # a shard changed, same size
    changed.write_bytes(bytes(raw))
    resumed = embed_images(model, PRESET, [photos], out, resume=True, **settings)
    assert (resumed.images, resumed.skipped) == (10, 8)  # the 10 rows of the two shards, not "all already there"
    assert "features-000001.npy holds 10,361 bytes where the index says 10,368 (cut short" in caplog.text
    assert "features-000002.npy does not have the SHA-256 the index holds" in caplog.text
    got = by_path(out)
    assert got.keys() == want.keys() and all(np.allclose(got[p], want[p], atol=1e-5) for p in want)
    assert not cut.exists() and not changed.exists()  # replaced by new shards
    with pytest.raises(FileExistsError, match=r"already holds embeddings .*pass resume \(--resume\)"):
        embed_images(model, PRESET, [photos], out, **settings)
    again = embed_images(model, PRESET, [photos], out, overwrite=True, **settings)
    assert again.skipped == 0 and sorted(p.name for p in out.glob("*.npy")) == [
        f"features-00000{i}.npy" for i in range(4)
    ]


def test_a_damaged_index_or_settings_file_is_named_with_its_line(tmp_path):
    out = tmp_path / "emb"
    out.mkdir()
    (out / "index.jsonl").write_text(
        '{"image": "a.png", "shard": "features-000000.npy", "row": 0}\n{"image": "b.png"}{"image": "c.png"}\n'
    )
    with pytest.raises(ValueError, match=r"emb/index.jsonl, line 2: not an index line of vggnet embed \(Extra data"):
        read_embeddings(out)
    (out / "index.jsonl").write_text('{"image": "a.png", "shard": "../../etc/passwd", "row": 0}\n')
    with pytest.raises(ValueError, match=r"line 1: .*the shard '../../etc/passwd' is not a name embed writes"):
        read_embeddings(out)
    for line, problem in (
        ('{"shard": "features-000000.npy", "row": 0}', "no image path"),  # was a KeyError
        ('{"image": {"a": 1}, "shard": "features-000000.npy", "row": 0}', "no image path"),  # was returned as a path
        ('{"image": "a.png", "shard": "features-000000.npy", "row": true}', "the row 'True' is not a count"),
        ("[" * 100_000, "maximum recursion depth exceeded"),  # was a RecursionError
    ):
        (out / "index.jsonl").write_text(line + "\n")
        with pytest.raises(ValueError, match=rf"line 1: not an index line of vggnet embed \({problem}"):
            read_embeddings(out)
    with pytest.raises(FileExistsError, match="already holds embeddings"):
        check_folder(out, resume=False, overwrite=False)


@pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="no FIFOs here")
def test_settings_planted_as_a_fifo_or_a_link_to_an_endless_file_are_refused(tmp_path):
    for plant in (lambda p: os.mkfifo(p), lambda p: p.symlink_to("/dev/zero")):  # hung; read until memory ran out
        out = tmp_path / f"emb{len(os.listdir(tmp_path))}"
        out.mkdir()
        plant(out / "embed.json")
        with pytest.raises(OutputPathError, match=r"embed.json back: it is a (FIFO|symbolic link)"):
            _check_settings(out, {"layer": "fc7"}, resume=True)


def test_settings_nested_too_deep_are_named_not_a_recursion_error(tmp_path):
    (tmp_path / "embed.json").write_text("[" * 60_000)
    with pytest.raises(ValueError, match=r"embed.json: not the settings vggnet embed writes \(maximum recursion"):
        _check_settings(tmp_path, {"layer": "fc7"}, resume=True)
