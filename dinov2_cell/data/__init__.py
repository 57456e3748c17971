"""Data: CPJUMP1 sites as training samples, the dataset-string registry upstream's loader consults (once
`dinov2_cell.plugin.install()` has run), indexing, reading and normalisation."""
