"""The local-aggregation meta-architecture: upstream `SSLMetaArch` plus one DINO term across sites of a well.

Loss (METHOD.md): L = DINO(f_s(v1_masked), f_t(v1)) + DINO(f_s(v2), f_t(v1)) + l1 iBOT + l2 KoLeo(f_s(v1), f_s(v2)),
with v2 a view of a random OTHER site of the same well. Upstream computes every term but the v2 ones; this subclass
adds them in upstream's idiom (`cfg.local_aggregation.loss_weight`, `self.do_local_aggregation`,
`loss_dict["local_aggregation_loss"]`) without copying upstream's `forward_backward`:

- the teacher's centred/sharpened probabilities of v1 are captured from `self.dino_loss` while upstream runs (no second
  teacher forward);
- upstream's backward is deferred (`backprop_loss` stores the loss), the student runs once more on v2 through the same
  backbone and DINO head, and ONE backward covers all terms (one FSDP gradient reduction per step).

The v2 term is averaged over the two teacher global crops, so it has the scale of one DINO cross-entropy, like
upstream's (averaged) DINO term; the paper weights the two equally, hence `loss_weight: 1.0`.
"""

from __future__ import annotations

import logging

import torch

from dinov2.loss import KoLeoLoss

from dinov2_cell.augment.device import build_device_augmentation
from dinov2_cell.plugin import import_upstream

# upstream asserts xFormers when dinov2.train is imported; import_upstream does so without patching anything
SSLMetaArch = import_upstream("dinov2.train.ssl_meta_arch").SSLMetaArch

logger = logging.getLogger("dinov2_cell")

OTHER_SITE_KEY = "collated_other_site_crops"


class LocalAggregationMetaArch(SSLMetaArch):
    """`SSLMetaArch` with the local-aggregation terms; identical to upstream when `loss_weight` is 0.

    Args:
        cfg: the merged config (upstream default + plugin default + experiment + command line).
    """

    def __init__(self, cfg):
        super().__init__(cfg)
        la_cfg = cfg.get("local_aggregation", None)
        self.local_aggregation_loss_weight = float(la_cfg.loss_weight) if la_cfg is not None else 0.0
        self.local_aggregation_koleo_loss_weight = float(la_cfg.koleo_loss_weight) if la_cfg is not None else 0.0
        # keep_koleo_when_off: with loss_weight 0 the student still sees v2 for its KoLeo term, so that "local
        # aggregation off" ablates the cross-site DINO term alone
        keep_koleo = bool(la_cfg.get("keep_koleo_when_off", False)) if la_cfg is not None else False
        self.do_local_aggregation_dino = self.local_aggregation_loss_weight > 0
        self.do_local_aggregation = self.do_local_aggregation_dino or (
            keep_koleo and self.local_aggregation_koleo_loss_weight > 0
        )
        if self.do_local_aggregation:
            if not self.do_dino and self.do_local_aggregation_dino:
                raise ValueError("local_aggregation.loss_weight > 0 needs the DINO head: set dino.loss_weight > 0")
            if self.local_aggregation_koleo_loss_weight > 0 and not hasattr(self, "koleo_loss"):
                self.koleo_loss = KoLeoLoss()
            logger.info(
                "OPTIONS -- LOCAL AGGREGATION -- loss_weight: %s, koleo_loss_weight: %s",
                self.local_aggregation_loss_weight,
                self.local_aggregation_koleo_loss_weight,
            )
        self._set_center_momentum(cfg)
        # augmentations.device: model -> per-pixel cell augmentations on the training device, at the step's start
        self.device_augmentation = build_device_augmentation(cfg)
        self._defer_backprop = False
        self._deferred_loss = None
        self.last_local_aggregation_targets = None  # the last step's v1 teacher targets, read by the health monitor

    def _set_center_momentum(self, cfg):
        """Applies `dino.center_momentum` to upstream's DINO loss, whose constructor fixes it at 0.9.

        The centre is an EMA of the teacher's batch-mean logits: c <- m * c + (1 - m) * mean(batch). With few
        samples per step and a teacher whose outputs barely differ between inputs (tiny models, early training), a
        lagging centre leaves one prototype ahead for every input (one-prototype collapse); m = 0 centres each step
        with the previous step's batch mean.
        """
        dino_cfg = cfg.get("dino", None)
        value = dino_cfg.get("center_momentum", None) if dino_cfg is not None else None
        if value is None or not self.do_dino:
            return
        momentum = float(value)
        if not 0.0 <= momentum < 1.0:
            raise ValueError(f"dino.center_momentum must be in [0, 1) (1 would freeze the centre at 0), got {value}")
        self.dino_loss.center_momentum = momentum
        logger.info("OPTIONS -- DINO -- center_momentum: %s", momentum)

    def backprop_loss(self, loss):
        if self._defer_backprop:
            self._deferred_loss = loss
            return
        super().backprop_loss(loss)

    def _capture_teacher_probabilities(self):
        """Wraps the two teacher-normalisation methods of `self.dino_loss` to keep their last output."""
        captured = {}
        originals = {}
        for name in ("softmax_center_teacher", "sinkhorn_knopp_teacher"):
            method = getattr(self.dino_loss, name)
            originals[name] = method

            def wrapper(*args, _method=method, **kwargs):
                out = _method(*args, **kwargs)
                captured["probs"] = out
                return out

            setattr(self.dino_loss, name, wrapper)

        def restore():
            for name in originals:
                delattr(self.dino_loss, name)  # drop the instance attribute: the class method shows again

        return captured, restore

    def local_aggregation_losses(self, other_site_crops: torch.Tensor, teacher_probs: torch.Tensor):
        """The v2 terms: DINO(f_s(v2), f_t(v1)) averaged over the two teacher crops, and KoLeo on f_s(v2).

        Args:
            other_site_crops: (B, C, H, W) views of another site of each sample's well.
            teacher_probs: (2B, K) teacher probabilities of the two global crops of v1, as upstream computed them.

        Returns:
            (dino_term or None, koleo_term or None); dino_term is None when `loss_weight` is 0 (the KoLeo-only
            ablation); koleo_term already carries its weight, like upstream's `koleo_loss`.
        """
        out = self.student.backbone(other_site_crops, is_training=True)
        cls_tokens = out["x_norm_clstoken"]
        dino_term = None
        if self.do_local_aggregation_dino:
            logits = self.student.dino_head(cls_tokens)
            teacher_views = list(teacher_probs.chunk(2))
            dino_term = self.dino_loss(student_output_list=[logits], teacher_out_softmaxed_centered_list=teacher_views)
            dino_term = dino_term / len(teacher_views)
        koleo_term = None
        if self.local_aggregation_koleo_loss_weight > 0:
            koleo_term = self.local_aggregation_koleo_loss_weight * self.koleo_loss(cls_tokens)
        return dino_term, koleo_term

    def forward_backward(self, images, teacher_temp):
        if self.device_augmentation is not None:
            images = self.device_augmentation.augment_batch(images, next(self.student.parameters()).device)
        if not self.do_local_aggregation:
            return super().forward_backward(images, teacher_temp)
        if OTHER_SITE_KEY not in images:
            raise KeyError(
                f"local aggregation is on but the batch has no {OTHER_SITE_KEY!r}: the dataset must hand out other "
                "sites (CPJUMP1 dataset + cell augmentation) or set local_aggregation.loss_weight=0"
            )
        captured, restore = self._capture_teacher_probabilities()
        self._defer_backprop, self._deferred_loss = True, None
        try:
            loss_dict = super().forward_backward(images, teacher_temp)
        finally:
            self._defer_backprop = False
            restore()
        device = next(self.student.parameters()).device
        other = images[OTHER_SITE_KEY].to(device, non_blocking=True)
        probs = captured.get("probs")
        dino_term, koleo_term = self.local_aggregation_losses(other, probs)
        self.last_local_aggregation_targets = probs.detach() if probs is not None else None
        total = self._deferred_loss
        if dino_term is not None:
            total = total + self.local_aggregation_loss_weight * dino_term
            loss_dict["local_aggregation_loss"] = dino_term
        if koleo_term is not None:
            total = total + koleo_term
            loss_dict["local_aggregation_koleo_loss"] = koleo_term
        self._deferred_loss = None
        super().backprop_loss(total)
        return loss_dict
