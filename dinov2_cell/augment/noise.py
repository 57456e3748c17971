"""Microscope noise (shot + dark + read noise) with a fast exact Poisson sampler; formulas in `transforms.py`'s docstring."""

from __future__ import annotations

import functools
import math
from typing import Optional, Tuple

import torch

from dinov2_cell.augment.checks import _check_nonneg, _check_prob, _coin


class _PoissonTable:
    """Exact Poisson sampler for rates in [0, max_rate], 2-3x faster than torch.poisson on CPU.

    Rate lam = q * STEP + r with r in [0, STEP). Poisson(lam) = Poisson(q * STEP) + Poisson(r) (independent sum).
    - Poisson(q * STEP): inverse CDF with a guide table (Chen & Asau): cell floor(u * GUIDE) of row q stores the
      answer, or flags that a CDF jump falls inside the cell; flagged draws (~1.5 %) step through the CDF.
    - Poisson(r): an arrival happens with probability 1 - exp(-r) <= 1 - exp(-STEP), so candidates are drawn sparsely
      (geometric gaps at that bound), accepted with probability (1 - exp(-r)) / bound, and accepted ones get their
      count from Poisson(r) conditioned on >= 1, by inverse CDF.
    Exact up to the float32 resolution (~6e-8) of the uniform draws and of the stored CDF: tail probabilities below
    that are not resolved (torch.poisson has the same limit in float32). Dense work runs in cache-sized chunks: large temporaries cost more in page faults
    than in arithmetic on CPU.
    """

    STEP = 1.0 / 32  # power of two: lam / STEP and lam - q * STEP are exact in float32
    GUIDE = 512
    CHUNK = 1 << 17

    def __init__(self, max_rate: float):
        self.max_rate = float(max_rate)
        rows = int(math.floor(self.max_rate / self.STEP)) + 1
        lam = torch.arange(rows, dtype=torch.float64) * self.STEP
        # Enough counts that the tail beyond is far below 2**-24 at the largest rate.
        kmax = int(self.max_rate + 12 * math.sqrt(self.max_rate + 1) + 12)
        k = torch.arange(kmax, dtype=torch.float64)
        logpmf = k[None] * torch.log(lam[:, None].clamp_min(1e-300)) - lam[:, None] - torch.lgamma(k + 1)[None]
        logpmf[0, 1:] = -math.inf  # Poisson(0) is 0
        logpmf[0, 0] = 0.0
        cdf = torch.cumsum(torch.exp(logpmf), dim=1).float()
        cdf[:, -1] = 2.0  # fold the tail into the last count: every u < 1 stops there
        self.rows, self.kmax = rows, kmax
        self.cdf = cdf.contiguous()  # rows x kmax, float32 as compared at run time
        # Cell m = [m/G, (m+1)/G): lo = #{k: cdf_k <= m/G}, hi = #{k: cdf_k < (m+1)/G}; the inverse CDF
        # #{k: cdf_k <= u} of every u in the cell lies in [lo, hi]. Store lo when lo == hi, else -(lo + 1).
        edges = torch.arange(self.GUIDE + 1, dtype=torch.float64) / self.GUIDE
        c64 = cdf.double()
        lo = torch.searchsorted(c64, edges[None, :-1].expand(rows, -1).contiguous(), right=True)
        hi = torch.searchsorted(c64, edges[None, 1:].expand(rows, -1).contiguous(), right=False)
        self.guide = torch.where(lo == hi, lo, -(lo + 1)).float().contiguous()  # exact small integers

    def sample(
        self,
        rate: torch.Tensor,
        out: Optional[torch.Tensor] = None,
        scale: float = 1.0,
        offset: float = 0.0,
        noise_std: float = 0.0,
    ) -> torch.Tensor:
        """out = scale * Poisson(rate) + offset + noise_std * N(0, 1), elementwise.

        Args:
            rate: contiguous float32 tensor of rates in [0, max_rate].
            out: contiguous float32 tensor of the same shape to write into; may be `rate` itself.
            scale: multiplies the counts.
            offset: added to every element.
            noise_std: std of added Gaussian noise (0: none drawn).

        Returns:
            `out` (a new tensor when None).
        """
        flat = rate.reshape(-1)
        n = flat.numel()
        res_pos, res_cnt = self._residual_arrivals(flat)  # reads the rates before `out` may overwrite them
        out = torch.empty_like(flat) if out is None else out
        out_flat = out.view(-1)
        amb_pos, amb_u, amb_q, amb_k = [], [], [], []
        for start in range(0, n, self.CHUNK):
            t = flat[start : start + self.CHUNK] * (1.0 / self.STEP)
            q = t.floor_().clamp_(0, self.rows - 1)
            u = torch.rand(q.numel())
            idx = torch.floor(u * self.GUIDE).add_(q, alpha=self.GUIDE).long()
            k = self.guide.take(idx)
            amb = (k < 0).nonzero().flatten()
            if amb.numel():
                k[amb] = -1.0 - k[amb]
                amb_k.append(k[amb])
                amb_pos.append(amb + start)
                amb_u.append(u[amb])
                amb_q.append(q[amb])
            if scale != 1.0:
                k.mul_(scale)
            if offset:
                k.add_(offset)
            if noise_std:
                k.add_(torch.randn(k.numel()), alpha=noise_std)
            out_flat[start : start + self.CHUNK] = k
        if amb_pos:
            # Walk the CDF from the guide's lower bound; out already holds that bound, so add the steps taken.
            pos, u, base, k0 = (
                torch.cat(amb_pos),
                torch.cat(amb_u),
                torch.cat(amb_q).long() * self.kmax,
                torch.cat(amb_k),
            )
            extra = torch.zeros(pos.numel())
            while True:
                step = u >= self.cdf.take(base + (k0 + extra).long())
                if not bool(step.any()):
                    break
                extra += step
            out_flat.index_add_(0, pos, extra.mul_(scale))
        if res_pos.numel():
            out_flat.index_add_(0, res_pos, res_cnt.mul_(scale))
        return out

    def _residual_arrivals(self, flat: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
        """Positions and counts (float32) of the Poisson(r) part, r = rate - floor(rate / STEP) * STEP."""
        n = flat.numel()
        bound = -math.expm1(-self.STEP)
        expected = n * bound
        num = int(expected + 8 * math.sqrt(expected) + 16)
        pieces, start = [], -1
        while True:
            gaps = torch.empty(num).geometric_(bound).long()  # >= 1: trials up to and including the first success
            p = torch.cumsum(gaps, 0).add_(start)
            pieces.append(p[p < n])
            if int(p[-1]) >= n:
                break
            start = int(p[-1])
        pos = torch.cat(pieces)
        # Same float32 operations as the dense pass, so q and r agree with it.
        t = flat[pos] * (1.0 / self.STEP)
        r = (t - t.floor().clamp(0, self.rows - 1)).double() * self.STEP
        p_hit = -torch.expm1(-r)
        hit = torch.rand(pos.numel(), dtype=torch.float64) * bound < p_hit
        pos, r, p_hit = pos[hit], r[hit], p_hit[hit]
        # Count given >= 1: inverse CDF of P(j | j >= 1) = exp(-r) r^j / j! / (1 - exp(-r)), j = 1, 2, ...
        v = torch.rand(pos.numel(), dtype=torch.float64)
        term = torch.exp(-r) * r / p_hit
        cum = term.clone()
        j = torch.ones_like(r)
        active = (v >= cum).nonzero().flatten()
        while active.numel():
            j[active] += 1
            term[active] *= r[active] / j[active]
            cum[active] += term[active]
            active = active[v[active] >= cum[active]]
        return pos, j.float()


@functools.lru_cache(maxsize=8)
def _poisson_table(max_rate: float) -> _PoissonTable:
    return _PoissonTable(max_rate)


def poisson(rate: torch.Tensor, max_rate: float) -> torch.Tensor:
    """Exact Poisson draws for rates in [0, max_rate] (torch global RNG).

    Uses a cached table sampler when max_rate <= 64 (the paper's noise has max_rate = 1 / sigma_shot = 10), else
    torch.poisson.

    Args:
        rate: tensor of rates, any shape; values must lie in [0, max_rate].
        max_rate: upper bound of the rates (sizes the table).

    Returns:
        float32 counts, same shape as `rate`.
    """
    rate = rate.float().contiguous()
    if max_rate <= 64:
        return _poisson_table(float(max_rate)).sample(rate).view(rate.shape)
    return torch.poisson(rate)


def microscope_noise(img: torch.Tensor, shot: float, dark: float, read: float, inplace: bool = False) -> torch.Tensor:
    """Microscope noise of appendix 6.1: I <- clip(Poisson(I / shot) * shot + dark + N(0, read^2), 0, 1).

    Args:
        img: C x H x W float32 tensor in [0, 1] (values outside are clamped first: the model is defined on [0, 1]).
        shot: sigma_shot (> 0).
        dark: sigma_dark, constant dark-current offset.
        read: sigma_read, std of the Gaussian read noise.
        inplace: overwrite `img` (must be contiguous) instead of allocating.

    Returns:
        The noisy image in [0, 1], same shape.
    """
    max_rate = 1.0 / shot
    if inplace and img.is_contiguous() and img.dtype == torch.float32:
        rate = img.clamp_(0.0, 1.0).mul_(max_rate)
        out = img
    else:
        rate = img.float().clamp(0.0, 1.0).mul_(max_rate).contiguous()
        out = rate
    if max_rate <= 64:
        _poisson_table(float(max_rate)).sample(rate, out=out, scale=shot, offset=dark, noise_std=read)
    else:
        counts = torch.poisson(rate)
        out.copy_(counts.mul_(shot).add_(dark).add_(torch.randn(out.shape), alpha=read))
    return out.clamp_(0.0, 1.0)


class MicroscopeNoise:
    """Shot + dark-current + read noise (appendix 6.1), applied to a crop with probability p.

    Args:
        shot: sigma_shot, photons = I / sigma_shot.
        dark: sigma_dark offset.
        read: sigma_read, Gaussian read-noise std.
        p: probability of noising a crop.
    """

    def __init__(self, shot: float = 0.1, dark: float = 0.05, read: float = 0.01, p: float = 0.5):
        self.shot = _check_nonneg("noise_shot", shot)
        if self.shot == 0:
            raise ValueError("augmentations.noise_shot must be > 0 (photons = I / noise_shot)")
        self.dark = _check_nonneg("noise_dark", dark)
        self.read = _check_nonneg("noise_read", read)
        self.p = _check_prob("noise_p", p)

    def sample_params(self) -> bool:
        """Whether to noise this crop (the noise itself is drawn in apply)."""
        return _coin(self.p)

    def apply(self, img: torch.Tensor, params: bool, inplace: bool = False) -> torch.Tensor:
        """Noise `img` if params (overwriting it when inplace), else return it unchanged."""
        return microscope_noise(img, self.shot, self.dark, self.read, inplace=inplace) if params else img

    def __call__(self, img: torch.Tensor) -> torch.Tensor:
        return self.apply(img, self.sample_params())


# ---------------------------------------------------------------------------------------- elastic + rotation
