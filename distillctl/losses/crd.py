"""Contrastive representation distillation (Tian, Krishnan & Isola 2020, "Contrastive Representation Distillation",
ICLR).

Student and teacher embeddings (a tapped layer, spatially averaged) are projected into a shared unit sphere. For each
image the other network's embedding of the *same* image is the positive and `negatives` embeddings of other training
images, read from a memory bank that keeps a running (momentum) embedding of every training image, are the
negatives; a noise-contrastive estimate (NCE) of the mutual information between the two networks' representations
is maximized, in both directions. The memory banks and the NCE normalizing constants are the term's state: saved in
every checkpoint and restored on resume. The projections train with the student.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from distillctl.errors import UserError
from distillctl.losses.base import StepOutputs
from distillctl.losses.embedding import embedding
from distillctl.losses.pairs import OneLayer
from distillctl.losses.registry import term

EPS = 1e-7


def nce_loss(scores: torch.Tensor, num_images: int) -> torch.Tensor:
    """NCE loss of [B, 1 + K] normalized scores whose column 0 is the positive; noise is uniform over the images."""
    k = scores.shape[1] - 1
    noise = k / num_images  # K * P_n(i)
    positive = torch.log(scores[:, 0] / (scores[:, 0] + noise + EPS))
    negative = torch.log(noise / (scores[:, 1:] + noise + EPS))
    return -(positive.sum() + negative.sum()) / len(scores)


def contrast(memory: torch.Tensor, queries: torch.Tensor, candidates: torch.Tensor, temperature: float) -> torch.Tensor:
    """exp(<memory[candidates[b, k]], queries[b]> / T): [B, 1 + K]. With a small memory the full product with every
    stored embedding costs less than gathering B x (1 + K) of them, and gives the same numbers."""
    if len(memory) <= 8 * candidates.shape[1]:
        dots = (memory @ queries.t()).t()  # [B, N]
        return torch.exp(dots.gather(1, candidates) / temperature)
    rows = memory[candidates]  # [B, 1 + K, D]
    return torch.exp((rows @ queries.unsqueeze(2)).squeeze(2) / temperature)


@term("crd")
class ContrastiveRD(OneLayer):
    """Tell the teacher's embedding of each image from its embeddings of other images, with the student's (and back)."""

    per_image_state = True

    def setup(self, probe: StepOutputs) -> None:
        if probe.num_images < 2:
            raise UserError(f"crd tells each training image from the others, so it needs at least 2 training images "
                            f"(this split has {probe.num_images}).")
        p, device = self.params, probe.student_logits.device
        s, t = (embedding(f) for f in self.pair(probe))
        self.embed_student = nn.Linear(s.shape[1], p.feat_dim).to(device)
        self.embed_teacher = nn.Linear(t.shape[1], p.feat_dim).to(device)
        # The reference's initialization: uniform in +-1/sqrt(D/3), each row a running unit vector once updated.
        bound = 1 / math.sqrt(p.feat_dim / 3)
        for name in ("memory_student", "memory_teacher"):
            self.register_buffer(name, (torch.rand(probe.num_images, p.feat_dim, device=device) * 2 - 1) * bound)
        # NCE normalizing constants, fixed from the first batch (as the reference does); -1: not set yet.
        self.register_buffer("z_student", torch.tensor(-1.0, device=device))
        self.register_buffer("z_teacher", torch.tensor(-1.0, device=device))

    def forward(self, out: StepOutputs) -> torch.Tensor:
        if out.indices is None:  # both loaders give positions; a batch source that cannot is refused here
            raise UserError("crd needs to know which training images a batch holds, and this loader does not say.")
        p, idx = self.params, out.indices
        s, t = (embedding(f) for f in self.pair(out))
        v_s = F.normalize(self.embed_student(s), dim=1)
        v_t = F.normalize(self.embed_teacher(t), dim=1)
        n = len(self.memory_student)
        # Candidates: the image itself first, then `negatives` images drawn uniformly from the training split.
        candidates = torch.cat([idx[:, None], torch.randint(n, (len(idx), p.negatives), device=idx.device)], 1)
        # The teacher's embedding against the student's memory, and the student's against the teacher's.
        to_teacher = contrast(self.memory_student.detach(), v_t, candidates, p.temperature)
        to_student = contrast(self.memory_teacher.detach(), v_s, candidates, p.temperature)
        if self.z_student < 0:
            self.z_student.fill_(to_student.detach().mean().item() * n)
            self.z_teacher.fill_(to_teacher.detach().mean().item() * n)
        # The banks move after the step: backward still needs the values the scores were computed from.
        self.pending = idx, v_s.detach(), v_t.detach()
        return nce_loss(to_student / self.z_student, n) + nce_loss(to_teacher / self.z_teacher, n)

    def after_step(self, out: StepOutputs) -> dict[str, float]:
        if (pending := getattr(self, "pending", None)) is not None:
            idx, v_s, v_t = pending
            self.remember(self.memory_student, idx, v_s)
            self.remember(self.memory_teacher, idx, v_t)
            self.pending = None
        return {}

    @torch.no_grad()
    def remember(self, memory: torch.Tensor, idx: torch.Tensor, v: torch.Tensor) -> None:
        """Move the stored embeddings of images idx towards v, keeping them unit vectors."""
        m = self.params.momentum
        memory[idx] = F.normalize(memory[idx] * m + v.float() * (1 - m), dim=1)
