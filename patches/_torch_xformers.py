"""Pure-PyTorch versions of the few xFormers operators upstream DINOv2 uses.

Upstream (dinov2 0.0.1.dev2) calls `xformers.ops.memory_efficient_attention`, `unbind`, `fmha.BlockDiagonalMask`,
`scaled_index_add` and `index_select_cat`. xFormers is optional here: it may be missing, or installed with kernels that
do not load on the current torch build ("No operator found", "Triton is needed"). These replacements are exact
(block-diagonal attention equals running each sequence on its own) and are what the patches install whenever real
xFormers is not usable.
"""

from __future__ import annotations

import functools
import logging
import types
from typing import List, Optional, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor

logger = logging.getLogger("dinov2_cell")


class BlockDiagonalMask:
    """Attention bias for a batch of variable-length sequences packed into one (1, sum(len), ...) tensor.

    Mirrors the small part of `xformers.ops.fmha.BlockDiagonalMask` that upstream uses: `from_seqlens`,
    `from_tensor_list`, `split` and the `_batch_sizes` attribute upstream sets on it.

    Args:
        seqlens: length of each packed sequence, in order.
    """

    def __init__(self, seqlens: Sequence[int]):
        self.seqlens = [int(s) for s in seqlens]
        self._batch_sizes: Optional[List[int]] = None

    @classmethod
    def from_seqlens(cls, seqlens: Sequence[int]) -> "BlockDiagonalMask":
        return cls(seqlens)

    @classmethod
    def from_tensor_list(cls, tensors: Sequence[Tensor]):
        """Packs (B_i, N_i, ...) tensors into one (1, sum B_i*N_i, ...) tensor and returns (mask, packed)."""
        seqlens, batch_sizes = [], []
        for x in tensors:
            seqlens += [x.shape[1]] * x.shape[0]
            batch_sizes.append(x.shape[0])
        mask = cls(seqlens)
        mask._batch_sizes = batch_sizes
        packed = torch.cat([x.reshape(1, -1, *x.shape[2:]) for x in tensors], dim=1)
        return mask, packed

    def split(self, tensor: Tensor) -> List[Tensor]:
        """Inverse of the packing: (1, sum B_i*N_i, ...) -> [(B_i, N_i, ...)]."""
        batch_sizes = self._batch_sizes if self._batch_sizes is not None else [1] * len(self.seqlens)
        outputs, start, seq_idx = [], 0, 0
        for b in batch_sizes:
            n = self.seqlens[seq_idx]
            outputs.append(tensor[:, start : start + b * n].reshape(b, n, *tensor.shape[2:]))
            start += b * n
            seq_idx += b
        return outputs

    def runs(self):
        """Yields (token_start, n_sequences, seq_len) for maximal runs of consecutive equal-length sequences."""
        start, i = 0, 0
        while i < len(self.seqlens):
            n, j = self.seqlens[i], i
            while j < len(self.seqlens) and self.seqlens[j] == n:
                j += 1
            yield start, j - i, n
            start += (j - i) * n
            i = j


def memory_efficient_attention(q: Tensor, k: Tensor, v: Tensor, attn_bias=None, op=None, p: float = 0.0) -> Tensor:
    """Softmax attention on xFormers' (B, M, H, K) layout through torch's scaled_dot_product_attention.

    With a `BlockDiagonalMask`, sequences of equal length are batched together and attended separately, which is
    exact: a token never sees another sequence's tokens.
    """
    del op  # the xFormers kernel choice has no meaning here
    if attn_bias is None:
        out = F.scaled_dot_product_attention(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2), dropout_p=p)
        return out.transpose(1, 2)
    if not isinstance(attn_bias, BlockDiagonalMask):
        raise TypeError(f"unsupported attn_bias {type(attn_bias).__name__}; only BlockDiagonalMask is implemented")
    if q.shape[0] != 1:
        raise ValueError("a block-diagonal attention bias expects packed inputs of batch size 1")
    outputs = []
    for start, count, n in attn_bias.runs():
        sl = slice(start, start + count * n)
        # (1, count*n, H, K) -> (count, H, n, K)
        qs, ks, vs = (t[0, sl].reshape(count, n, *t.shape[2:]).transpose(1, 2) for t in (q, k, v))
        o = F.scaled_dot_product_attention(qs, ks, vs, dropout_p=p)
        outputs.append(o.transpose(1, 2).reshape(1, count * n, *q.shape[2:]))
    return torch.cat(outputs, dim=1)


def unbind(x: Tensor, dim: int):
    return torch.unbind(x, dim)


def scaled_index_add(input: Tensor, index: Tensor, source: Tensor, scaling: Tensor = None, alpha: float = 1.0):
    """out = input; out[index] += alpha * source * scaling (scaling broadcast over the last dimension)."""
    if scaling is not None:
        source = source * scaling
    return torch.index_add(input, 0, index, source, alpha=alpha)


def index_select_cat(sources: Sequence[Tensor], indices: Sequence[Tensor]) -> Tensor:
    """Flattened concatenation of `src[idx]` for each pair (as xFormers returns it)."""
    return torch.cat([torch.index_select(s, 0, i).flatten() for s, i in zip(sources, indices)])


# Namespace shaped like `xformers.ops.fmha` for the code that reads attributes from it.
fmha = types.SimpleNamespace(
    BlockDiagonalMask=BlockDiagonalMask,
    MemoryEfficientAttentionFlashAttentionOp=None,
    memory_efficient_attention=memory_efficient_attention,
)


def make_standin_modules():
    """Module objects that can stand in for `xformers` and `xformers.ops` in `sys.modules` during one import."""
    pkg = types.ModuleType("xformers")
    ops = types.ModuleType("xformers.ops")
    for name in ("memory_efficient_attention", "unbind", "scaled_index_add", "index_select_cat"):
        setattr(ops, name, globals()[name])
    ops.fmha = fmha
    pkg.ops = ops
    pkg.__dinov2_cell_standin__ = True
    return {"xformers": pkg, "xformers.ops": ops}


@functools.lru_cache(maxsize=1)
def real_xformers_usable() -> bool:
    """True only if xFormers imports AND its kernels run on this machine (needs CUDA).

    The probe matters: xformers wheels install beside torch builds whose kernels they cannot load, and then fail
    only at the first call.
    """
    if not torch.cuda.is_available():
        return False
    try:
        from xformers.ops import fmha as real_fmha
        from xformers.ops import index_select_cat as real_isc
        from xformers.ops import memory_efficient_attention as real_mea

        q = torch.randn(1, 8, 2, 16, device="cuda", dtype=torch.float16)
        bias = real_fmha.BlockDiagonalMask.from_seqlens([3, 5])
        real_mea(q, q, q, attn_bias=bias)
        x = torch.randn(4, 8, device="cuda")
        real_isc([x], [torch.tensor([0, 2], device="cuda")])
        return True
    except Exception as e:  # any failure means "not usable"; the reason is logged once
        logger.info("xFormers not usable (%s: %s); using the PyTorch fallback", type(e).__name__, e)
        return False
