"""The teacher cache on the streaming loader: sampled crops kept per image with the teacher's (top-k) logits,
replayed by the loader, shared by every run that learns from the same teacher."""

from __future__ import annotations

import json

import pytest
import torch
from omegaconf import OmegaConf

from conftest import write_photo_folder
from distillctl.config import DatasetConfig
from distillctl.data import load_splits
from distillctl.engine.logit_codes import FullLogits, TopK, code_for
from distillctl.engine.teacher_cache import CachedTeacher, CacheSettings, open_cache
from distillctl.models import create_model

MEAN, STD, CPU = [0.5] * 3, [0.25] * 3, torch.device("cpu")


@pytest.fixture(scope="module")
def photos(tmp_path_factory) -> str:
    return str(write_photo_folder(tmp_path_factory.mktemp("photos"), {"train": 80, "test": 20}))


def train_split(photos: str):
    cfg = OmegaConf.merge(OmegaConf.structured(DatasetConfig), {"path": photos, "loader": "stream", "workers": 0,
                                                                "val_size": 16, "image_size": 32})
    return load_splits(cfg).train


def settings(tmp_path, mode: str, views: int, topk: int | None = None, half: bool = False) -> CacheSettings:
    return CacheSettings(mode, tmp_path, 4.0, half, "fp32", 32, topk, views)


def never(x):
    raise AssertionError("the teacher ran although every view was cached")


def test_top_k_keeps_the_teachers_k_best_classes_and_the_mass_of_the_rest():
    logits = torch.randn(6, 100) * 3
    code = code_for(100, torch.float32, 10)
    assert isinstance(code, TopK) and isinstance(code_for(10, torch.float32, 10), FullLogits)
    decoded = code.decode(code.encode(logits))
    top = logits.topk(10, dim=1).indices
    p, q = logits.softmax(1), decoded.softmax(1)
    assert torch.allclose(q.gather(1, top), p.gather(1, top), atol=1e-6)  # exact at T=1 on the top k
    rest = torch.ones_like(p, dtype=torch.bool).scatter(1, top, False)
    assert torch.allclose((q * rest).sum(1), (p * rest).sum(1), atol=1e-6)  # and on the total of the others
    assert torch.equal(decoded.argmax(1), logits.argmax(1))


@pytest.mark.parametrize("topk", [None, 3])
def test_a_filled_cache_gives_the_teachers_answers_for_the_crops_the_loader_replays(photos, tmp_path, topk):
    torch.manual_seed(0)
    teacher = create_model("resnet8", 10).eval()
    split = train_split(photos)
    batches = split.train_batches(16, MEAN, STD, CPU, seed=0, max_steps=3)
    cache = open_cache(settings(tmp_path, "on", views=2, topk=topk), batches, teacher, 10, [])
    assert cache.share_filled == 1.0 and cache.path.name.endswith("-2views.safetensors")
    cached = CachedTeacher(cache, batches, never, never)
    with torch.inference_mode():
        for _ in range(3):  # epoch 2 replays view 0 again
            for x, _ in batches:
                live, answer = teacher(x), cached(x)
                if topk is None:
                    assert torch.allclose(answer, live, atol=1e-5)
                else:
                    best = live.topk(topk, dim=1).indices
                    assert torch.allclose(answer.gather(1, best), live.gather(1, best), atol=1e-5)
    assert cached.teacher_share == 0.0


def test_every_seed_sees_the_caches_views_in_its_own_order(photos, tmp_path):
    teacher = create_model("resnet8", 10).eval()

    def crops(seed: int, epoch: int) -> dict[int, torch.Tensor]:
        batches = train_split(photos).train_batches(16, MEAN, STD, CPU, seed=seed, max_steps=4)
        open_cache(settings(tmp_path, "auto", views=2), batches, teacher, 10, [])
        found = {}
        for e in range(epoch + 1):
            for x, _ in batches:
                if e == epoch:
                    found.update({int(p): image for p, image in zip(batches.keys[0], x)})
        return found

    a, b = crops(0, 0), crops(1, 0)
    shared = a.keys() & b.keys()
    assert shared and all(torch.equal(a[p], b[p]) for p in shared)  # the same crop of each image
    assert list(a) != list(b)  # in each seed's own order
    later = crops(0, 1)  # the next epoch: the second view
    assert any(not torch.equal(a[p], later[p]) for p in a.keys() & later.keys())


@pytest.mark.slow
def test_a_second_seed_reads_every_streamed_answer_the_first_one_stored(photos, cli, tmp_path):
    common = ["distill", f"dataset.path={photos}", "dataset.loader=stream", "dataset.workers=0", "dataset.image_size=32",
              "dataset.val_size=16", "trainer.epochs=2", "trainer.batch_size=16", "trainer.threads=1", "distill.teacher_cache=auto"]
    for seed in (0, 1):
        result = cli(*common, f"seed={seed}", f"run_dir=runs/s{seed}")
        assert result.code == 0, result.text[-2000:]
        assert "the cache's 2 views of every image" in result.out
    first, second = (json.loads((tmp_path / "runs" / run / "student" / "metrics.json").read_text()) for run in ("s0", "s1"))
    assert first["teacher_cache"]["teacher_ran_on"] == 1.0
    assert second["teacher_cache"]["teacher_ran_on"] == 0.0 and second["teacher_cache"]["filled"] == 1.0
