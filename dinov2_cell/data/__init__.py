"""Data: importing registers the CPJUMP1 dataset into the dataset-string registry that upstream's loader consults."""

from dinov2_cell.data import cpjump1_dataset  # noqa: F401  (registers "CPJUMP1")
