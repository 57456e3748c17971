"""Models: importing registers the multi-channel builder and the tiny archs into upstream."""

from dinov2_cell.models import multichannel_vit  # noqa: F401  (registers)
