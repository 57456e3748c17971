"""Patch of `dinov2.data.loaders._parse_dataset_str`.

Fixes: upstream knows only ImageNet and ImageNet22k ('ValueError: Unsupported dataset "CPJUMP1"') and asserts every
key is one of root/extra/split. The replacement looks the name up in dinov2_cell's dataset registry first
(`dinov2_cell.data.registry`, which validates the keys of each registered dataset) and delegates every other name to
upstream, so `make_dataset` (which looks `_parse_dataset_str` up at call time) builds registered datasets.
When: GPU and CPU.
"""

import functools


def _wrap_parse(original):
    @functools.wraps(original)
    def _parse_dataset_str(dataset_str: str):
        from dinov2_cell.data.registry import parse_dataset_str

        parsed = parse_dataset_str(dataset_str)
        return parsed if parsed is not None else original(dataset_str)

    _parse_dataset_str.__dinov2_cell_patched__ = True
    return _parse_dataset_str


def apply():
    import dinov2.data.loaders as loaders

    if not getattr(loaders._parse_dataset_str, "__dinov2_cell_patched__", False):
        loaders._parse_dataset_str = _wrap_parse(loaders._parse_dataset_str)
