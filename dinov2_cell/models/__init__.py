"""Models: the multi-channel ViT builder and the tiny architectures (plugged into upstream by
`dinov2_cell.plugin.install()`)."""
