"""Patch of `dinov2.layers.attention` (module-level xFormers names used by `MemEffAttention.forward`).

Replaces: the names `memory_efficient_attention`, `unbind`, `fmha` and the flag `XFORMERS_AVAILABLE`.
Fixes: without xFormers, `MemEffAttention.forward` asserts "xFormers is required for nested tensors usage" on the
nested (list) forward that training uses; with xFormers installed but unusable it fails with
"NotImplementedError: No operator found for `memory_efficient_attention_forward`".
When: GPU and CPU, whenever real xFormers is not usable (see `_torch_xformers.real_xformers_usable`).
"""

from . import _torch_xformers as tx


def apply():
    import dinov2.layers.attention as attention

    if tx.real_xformers_usable():
        return
    attention.memory_efficient_attention = tx.memory_efficient_attention
    attention.unbind = tx.unbind
    attention.fmha = tx.fmha
    attention.XFORMERS_AVAILABLE = True
