"""Patch of `dinov2.layers.block` (module-level xFormers names used by `NestedTensorBlock.forward_nested`).

Replaces: `fmha` (for `fmha.BlockDiagonalMask.from_seqlens` in `get_attn_bias_and_cat`), `scaled_index_add`,
`index_select_cat` and the flag `XFORMERS_AVAILABLE`.
Fixes: "AssertionError: Please install xFormers for nested tensors usage" without xFormers, and "Triton is needed"
from `scaled_index_add`/`index_select_cat` when xFormers is installed without working kernels.
When: GPU and CPU, whenever real xFormers is not usable.
"""

from . import _torch_xformers as tx


def apply():
    import dinov2.layers.block as block

    if tx.real_xformers_usable():
        return
    block.fmha = tx.fmha
    block.scaled_index_add = tx.scaled_index_add
    block.index_select_cat = tx.index_select_cat
    block.XFORMERS_AVAILABLE = True
