"""Cell augmentations. `dinov2_cell.train.train` plugs `CellDataAugmentation` and `collate_cell_data_and_cast` into
upstream's `do_train` (they need the run's config, so nothing is registered at import). With
`augmentations.device: model` the per-pixel augmentations run on the training device instead (`device.py`). Both sides
read the `augmentations.*` keys through one `AugmentationParams` object (`params.py`)."""
