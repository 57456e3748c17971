"""Training: the local-aggregation meta-architecture and our CPU/GPU main (see `dinov2_cell.train.train`)."""
