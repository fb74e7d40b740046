"""How a teacher-logit cache stores one answer: the whole logit vector, or its k largest logits with the log of the
softmax mass of the rest (what a 1000-class data set needs to keep a cache per streamed view affordable; the
top-k soft labels of Shen & Xing 2022, "A Fast Knowledge Distillation Framework for Visual Recognition")."""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch


def clamped(logits: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """Logits in `dtype`; a barely trained teacher's logits past float16's range stay finite (as the uncached run's
    are) rather than turning the loss into inf - inf."""
    limit = torch.finfo(dtype).max
    return logits.float().clamp(-limit, limit).to(dtype)


@dataclass(frozen=True)
class FullLogits:
    """Every class's logit."""

    classes: int
    dtype: torch.dtype

    name = "full"

    def shapes(self) -> dict[str, tuple[tuple[int, ...], torch.dtype]]:
        """Per (image, view) entry: tensor name -> (trailing shape, dtype)."""
        return {"logits": ((self.classes,), self.dtype)}

    def encode(self, logits: torch.Tensor) -> dict[str, torch.Tensor]:
        """What is stored for a batch of logits."""
        return {"logits": clamped(logits, self.dtype)}

    def decode(self, stored: dict[str, torch.Tensor]) -> torch.Tensor:
        """The float logits a loss reads back."""
        return stored["logits"].float()


@dataclass(frozen=True)
class TopK:
    """The k largest logits and their classes; the other classes share the rest of the softmax mass equally. Exact
    for the teacher's softmax at T=1 on the top k and on the total of the rest; at other temperatures the rest is
    an approximation, as in FKD."""

    classes: int
    dtype: torch.dtype
    k: int

    @property
    def name(self) -> str:
        return f"top{self.k}"

    def shapes(self) -> dict[str, tuple[tuple[int, ...], torch.dtype]]:
        index = torch.int16 if self.classes <= torch.iinfo(torch.int16).max else torch.int32
        return {"values": ((self.k,), self.dtype), "indices": ((self.k,), index), "rest": ((), torch.float32)}

    def encode(self, logits: torch.Tensor) -> dict[str, torch.Tensor]:
        logits = logits.float()
        values, indices = logits.topk(self.k, dim=1)
        rest = logits.scatter(1, indices, float("-inf")).logsumexp(1)
        return {"values": clamped(values, self.dtype), "indices": indices.to(self.shapes()["indices"][1]), "rest": rest}

    def decode(self, stored: dict[str, torch.Tensor]) -> torch.Tensor:
        each = stored["rest"] - math.log(self.classes - self.k)
        logits = each[:, None].expand(len(each), self.classes).clone()
        return logits.scatter_(1, stored["indices"].long(), stored["values"].float())


def code_for(classes: int, dtype: torch.dtype, topk: int | None) -> FullLogits | TopK:
    """Top-k when it is smaller than the class count, else the full logits."""
    return TopK(classes, dtype, topk) if topk and topk < classes else FullLogits(classes, dtype)
