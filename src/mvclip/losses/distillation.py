"""MobileCLIP's distillation loss: match the teachers' video<->text similarity distributions, mixed with VTC.

For one rank's ``B`` rows and the ``N`` columns of the global batch, with softmax taken over each row:

    student:    P_v2t = softmax(s * V  T_all^T)           P_t2v = softmax(s * T  V_all^T)
    teacher k:  Q_v2t = softmax(s_k * V'_k T'_all,k^T)    Q_t2v = softmax(s_k * T'_k V'_all,k^T)

``V``, ``T``: the student's unit-norm video and text embeddings, ``s``: its (learnable) logit scale;
``V'_k``, ``T'_k``: teacher ``k``'s unit-norm embeddings of the same clip view and caption, ``s_k``: its
logit scale: ``teacher_logit_scale`` when the recipe states one, else the batch's ``teacher_logit_scale[k]`` (the
data module fills it from the reinforced shards' manifest), else 100 (CLIP's cap, MobileCLIP's teachers').
Then, with ``KL(Q || P)`` summed over a row's columns and averaged over the rows,

    kd   = (1 / K) * sum_k ( KL(Q_v2t || P_v2t) + KL(Q_t2v || P_t2v) ) / 2
    fd   = (1 / K) * sum_k mean over rows of ( (1 - <V, V'_k>) + (1 - <T, T'_k>) ) / 2
    loss = (1 - weight) * vtc + weight * kd + feature_weight * fd

which is MobileCLIP's ``(1 - lambda) L_CLIP + lambda L_Distill`` with the teacher ensemble averaged per
teacher (its Eq. 1-2), plus an optional feature term (CLIP-KD's feature distillation, written as one minus
the cosine of unit vectors, i.e. half their squared distance): each clip and caption is pulled towards its
own teacher embedding, a per-sample target that does not depend on which other clips share the batch, where
the KL's soft targets only rank the few clips of a small batch. It matches the spaces directly, so it needs
the student's and the teacher's embedding widths to be equal. ``weight = 0`` and ``feature_weight = 0``
(the default) give exactly the VTC loss (KD, and FD for teachers of the student's width, are still computed
and logged). The KL
direction is teacher-to-student: the teacher's distribution is the target. MobileCLIP's released code
writes the same term as a cross-entropy with the teacher's soft labels; the two differ by the teachers'
entropy, a constant, so gradients are the same and only the logged value differs.

Distributed: teachers' embeddings are gathered like the student's (no gradient: they are data), so
each rank's KL rows see the same global columns and a run on N ranks equals one process on the
concatenated batch (``mvclip.losses.gather``).
"""
from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

from mvclip.config_checks import is_finite_real, is_real
from mvclip.errors import ConfigError
from mvclip.losses.base import ModelOutputs, TrainingLoss
from mvclip.losses.gather import gather_rows
from mvclip.losses.vtc import VideoTextContrastiveLoss

__all__ = ["DistillationLoss", "TEACHER_VIDEO", "TEACHER_TEXT", "TEACHER_LOGIT_SCALE"]

TEACHER_VIDEO = "teacher_video"  # batch key: {teacher name: (B, D_teacher) unit-norm video embeddings}
TEACHER_TEXT = "teacher_text"  # batch key: {teacher name: (B, D_teacher) unit-norm caption embeddings}
TEACHER_LOGIT_SCALE = "teacher_logit_scale"  # optional batch key: {teacher name: its logit scale}
DEFAULT_TEACHER_LOGIT_SCALE = 100.0  # CLIP's cap, where CLIP-family teachers end training


def _kl_rows(teacher_logits: Tensor, student_logits: Tensor) -> Tensor:
    """Mean over rows of KL(softmax(teacher) || softmax(student)), computed in float32."""
    return F.kl_div(
        F.log_softmax(student_logits.float(), dim=1), F.log_softmax(teacher_logits.float(), dim=1),
        log_target=True, reduction="batchmean",
    )


class DistillationLoss(TrainingLoss):
    """``(1 - weight) * VTC + weight * KD`` from teacher embeddings the shards carry (see the module docstring).

    Args:
        weight: lambda in [0, 1], the share of the distillation term.
        feature_weight: the weight (>= 0, default 0) of the feature term ``fd``; it needs teachers whose embedding
            width equals the student's.
        teacher_logit_scale: the scale (1 / temperature) of every teacher's similarities. None (default): each
            teacher's own, which the batch's ``teacher_logit_scale`` carries from the shards' manifest, and 100 for a
            teacher it gives none for. A number overrides the manifest (e.g. to sharpen the teachers).
        teachers: the teacher names to distil from (default: every teacher in the batch).
        gather_with_grad, local_loss, world_size, rank, group: as for ``VideoTextContrastiveLoss``.

    Returns ``{"loss", "vtc", "kd", "fd"}``, plus ``"kd/<teacher>"`` and ``"fd/<teacher>"`` per teacher when there
    are several.
    """

    def __init__(
        self,
        *,
        weight: float = 0.5,
        feature_weight: float = 0.0,
        teacher_logit_scale: float | None = None,
        teachers: list[str] | None = None,
        local_loss: bool = True,
        gather_with_grad: bool = True,
        world_size: int | None = None,
        rank: int | None = None,
        group: Any = None,
    ) -> None:
        super().__init__()
        if not is_real(weight) or not 0.0 <= weight <= 1.0:
            raise ValueError(f"weight: expected a number in [0, 1] (the distillation share), got {weight!r}")
        if not is_finite_real(feature_weight) or feature_weight < 0.0:
            raise ValueError(f"feature_weight: expected a finite number >= 0 (the feature term's weight), got {feature_weight!r}")
        if teacher_logit_scale is not None and (not is_finite_real(teacher_logit_scale) or teacher_logit_scale <= 0):
            raise ValueError(f"teacher_logit_scale: expected a finite number > 0, got {teacher_logit_scale!r}")
        if teachers is not None and (isinstance(teachers, str) or not teachers or not all(isinstance(t, str) for t in teachers)):
            raise ValueError(f"teachers: expected a non-empty list of teacher names, got {teachers!r}")
        self.weight = float(weight)
        self.feature_weight = float(feature_weight)
        self.teacher_logit_scale = None if teacher_logit_scale is None else float(teacher_logit_scale)
        self.teachers = list(teachers) if teachers is not None else None
        self.vtc = VideoTextContrastiveLoss(local_loss=local_loss, gather_with_grad=gather_with_grad, world_size=world_size,
                                            rank=rank, group=group)

    def _teacher_embeddings(self, batch: Mapping[str, Any], local: int) -> dict[str, tuple[Tensor, Tensor]]:
        """{name: (video, text)} of the teachers to use, checked and L2-normalised."""
        video, text = batch.get(TEACHER_VIDEO), batch.get(TEACHER_TEXT)
        if not isinstance(video, Mapping) or not isinstance(text, Mapping) or not video:
            raise ConfigError(
                f"model.loss: DistillationLoss needs `{TEACHER_VIDEO}` and `{TEACHER_TEXT}` in every batch, but the shards "
                "carry no teacher embeddings; add them with `python -m mvclip teacher` or choose another loss"
            )
        names = self.teachers if self.teachers is not None else sorted(video)
        pairs = {}
        for name in names:
            if name not in video or name not in text:
                raise ConfigError(
                    f"model.loss: teacher {name!r} is not in the batch's {TEACHER_VIDEO} / {TEACHER_TEXT} "
                    f"(it has {sorted(video)} / {sorted(text)})"
                )
            tv, tt = video[name], text[name]
            if not (isinstance(tv, Tensor) and isinstance(tt, Tensor)) or tv.ndim != 2 or tv.shape != tt.shape or tv.shape[0] != local:
                raise ValueError(
                    f"batch[{TEACHER_VIDEO!r}][{name!r}] {tuple(getattr(tv, 'shape', ()))} and batch[{TEACHER_TEXT!r}][{name!r}] "
                    f"{tuple(getattr(tt, 'shape', ()))}: expected two tensors of shape (B, D) with B = {local}, the student's batch"
                )
            pairs[name] = (F.normalize(tv.float(), dim=-1), F.normalize(tt.float(), dim=-1))
        return pairs

    def _scale_of(self, batch: Mapping[str, Any], name: str) -> float:
        """The stated scale, else the batch's for teacher `name` (a number, or a per-sample tensor of one repeated
        value), else 100."""
        if self.teacher_logit_scale is not None:
            return self.teacher_logit_scale
        scales = batch.get(TEACHER_LOGIT_SCALE)
        if not isinstance(scales, Mapping) or name not in scales:
            return DEFAULT_TEACHER_LOGIT_SCALE
        value = torch.as_tensor(scales[name], dtype=torch.float64).flatten()
        if value.numel() == 0 or not bool((value == value[0]).all()) or not math.isfinite(float(value[0])) or value[0] <= 0:
            raise ValueError(f"batch[{TEACHER_LOGIT_SCALE!r}][{name!r}]: expected one finite scale > 0, got {value.tolist()}")
        return float(value[0])

    def forward(self, outputs: ModelOutputs, batch: Mapping[str, Any]) -> dict[str, Tensor]:
        vtc_out = self.vtc.contrastive(outputs.video, outputs.text, outputs.logit_scale, output_dict=True)
        local = outputs.video.shape[0]
        teachers = self._teacher_embeddings(batch, local)
        rank, world_size = self.vtc._rank_and_world_size()
        device = outputs.video.device
        # one collective for every teacher: [video_1 | text_1 | video_2 | text_2 | ...] along the features
        widths = [tv.shape[1] for tv, _ in teachers.values()]
        packed = torch.cat([t for pair in teachers.values() for t in pair], dim=1).to(device)
        gathered = gather_rows(packed, with_grad=False, world_size=world_size, rank=rank, group=self.vtc.group)
        mine = slice(rank * local, (rank + 1) * local)
        kd_parts: dict[str, Tensor] = {}
        fd_parts: dict[str, Tensor] = {}
        start = 0
        for name, width in zip(teachers, widths):
            video_cols, text_cols = slice(start, start + width), slice(start + width, start + 2 * width)
            all_tv, all_tt = gathered[:, video_cols], gathered[:, text_cols]
            start += 2 * width
            rows_tv, rows_tt = (all_tv[mine], all_tt[mine]) if self.vtc.local_loss and world_size > 1 else (all_tv, all_tt)
            scale = self._scale_of(batch, name)
            with torch.no_grad():
                teacher_v2t = scale * rows_tv @ all_tt.T
                teacher_t2v = scale * rows_tt @ all_tv.T
            kd_parts[name] = (_kl_rows(teacher_v2t, vtc_out["logits_per_video"])
                              + _kl_rows(teacher_t2v, vtc_out["logits_per_text"])) / 2
            feature = self._feature_term(outputs, name, packed[:, video_cols], packed[:, text_cols])  # this rank's rows
            if feature is not None:
                fd_parts[name] = feature
        kd = torch.stack(list(kd_parts.values())).mean()
        vtc = vtc_out["loss"]
        loss = (1.0 - self.weight) * vtc + self.weight * kd
        out = {"loss": loss, "vtc": vtc, "kd": kd}
        if len(fd_parts) == len(kd_parts):
            out["fd"] = torch.stack(list(fd_parts.values())).mean()
            if self.feature_weight:
                out["loss"] = loss + self.feature_weight * out["fd"]
        if len(kd_parts) > 1:
            out.update({f"kd/{name}": value for name, value in kd_parts.items()})
            out.update({f"fd/{name}": value for name, value in fd_parts.items()})
        return out

    def check_teacher_widths(self, widths: Mapping[str, int], student_width: int, where: str) -> None:
        """Before the first step: the feature term needs every teacher it reads in the student's embedding width
        (`widths` from the training shards' manifest; teachers it does not list are checked at the first step)."""
        if not self.feature_weight:
            return
        for name, width in widths.items():
            if (self.teachers is None or name in self.teachers) and width != student_width:
                raise ConfigError(f"{where}: {_width_mismatch(name, width, student_width)}")

    def _feature_term(self, outputs: ModelOutputs, name: str, teacher_video: Tensor, teacher_text: Tensor) -> Tensor | None:
        """Mean over this rank's rows of (1 - cos) to the teacher's own embedding of the clip and of the caption
        (None for a teacher of another width when the term is not trained on).

        Per row, so no gathering: DDP's gradient average over equal per-rank batches equals one process's mean."""
        width = outputs.video.shape[1]
        if teacher_video.shape[1] != width:
            if not self.feature_weight:
                return None
            raise ValueError(_width_mismatch(name, teacher_video.shape[1], width))
        video = 1.0 - (outputs.video.float() * teacher_video).sum(dim=1)
        text = 1.0 - (outputs.text.float() * teacher_text).sum(dim=1)
        return (video.mean() + text.mean()) / 2


def _width_mismatch(name: str, teacher_width: int, student_width: int) -> str:
    return (f"feature_weight: teacher {name!r} embeds in {teacher_width} dimensions and the student in {student_width}; "
            "the feature term matches the two spaces directly, so they must be equal (or set feature_weight: 0)")
