"""Counter-based noise: Philox4x32-10 in plain PyTorch integer ops (the reference generator).

Every backend draws its noise from this one function of (seed, counter), so the same seed gives
the same noise on every backend, for any batch split, eagerly, compiled or graph-captured.
Counter layout (docs/ops_contract.md): (c0, c1, c2, c3) = (element // 4, global sample, t, stream).

All arithmetic is on int64 tensors holding uint32 values; 32x32-bit products are split into
16-bit halves so that nothing overflows int64 (PyTorch has no full uint32 arithmetic).
"""
from __future__ import annotations

from typing import Optional, Union

import torch

__all__ = ["philox4x32_10", "philox_words", "uniform_from_words", "normal_from_words",
           "philox_uniform", "philox_normal", "seed_to_int64", "split_seed", "device_offset",
           "STREAM_INIT", "STREAM_STEP", "STREAM_Q_SAMPLE"]

STREAM_INIT = 0      # the initial x_T noise
STREAM_STEP = 1      # reverse-step / DDIM noise
STREAM_Q_SAMPLE = 2  # training noise of q_sample

_M0, _M1 = 0xD2511F53, 0xCD9E8D57   # Philox4x32 multipliers
_W0, _W1 = 0x9E3779B9, 0xBB67AE85   # Weyl key increments
_MASK32 = 0xFFFFFFFF
COUNTER_WORD_END = 1 << 32           # every counter word is 32 bits; none wraps around
TWO_PI_F32 = 6.2831854820251465     # float32(2*pi), what the kernels use


def _mulhilo(a: torch.Tensor, m: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(hi, lo) 32-bit halves of a * m for uint32 a (int64 tensor) and uint32 constant m."""
    a_lo, a_hi = a & 0xFFFF, a >> 16
    p_lo = a_lo * m                      # < 2**48
    p_hi = a_hi * m                      # < 2**48; true product = p_hi * 2**16 + p_lo
    mid = p_lo + ((p_hi & 0xFFFF) << 16)  # < 2**49
    lo = mid & _MASK32
    hi = ((p_hi >> 16) + (mid >> 32)) & _MASK32
    return hi, lo


def philox4x32_10(c0, c1, c2, c3, k0, k1):
    """Philox4x32 with 10 rounds (Salmon et al. 2011). Inputs: int64 tensors/ints holding uint32
    values, broadcastable. Returns the four output words as int64 tensors."""
    c0, c1, c2, c3 = (torch.as_tensor(c, dtype=torch.int64) & _MASK32 for c in (c0, c1, c2, c3))
    k0 = torch.as_tensor(k0, dtype=torch.int64) & _MASK32
    k1 = torch.as_tensor(k1, dtype=torch.int64) & _MASK32
    for _ in range(10):
        hi0, lo0 = _mulhilo(c0, _M0)
        hi1, lo1 = _mulhilo(c2, _M1)
        c0, c1, c2, c3 = hi1 ^ c1 ^ k0, lo1, hi0 ^ c3 ^ k1, lo0
        k0 = (k0 + _W0) & _MASK32
        k1 = (k1 + _W1) & _MASK32
    return c0, c1, c2, c3


def seed_to_int64(seed: int) -> int:
    """A Python seed in [-2**63, 2**64) as the int64 with the same 64 bits."""
    if not isinstance(seed, int) or isinstance(seed, bool):
        raise TypeError(f"seed must be an int, got {type(seed).__name__}")
    if not -(1 << 63) <= seed < (1 << 64):
        raise ValueError(f"seed must fit in 64 bits, got {seed}")
    return seed - (1 << 64) if seed >= (1 << 63) else seed


def split_seed(seed: Union[int, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
    """(k0, k1) = (low, high) 32-bit words of a 64-bit seed (int, or int64 tensor whose first
    value is the key: ``[]``, ``[1]`` or ``[2]`` = (key, device sample offset))."""
    if isinstance(seed, int):
        s = torch.tensor(seed_to_int64(seed), dtype=torch.int64)
    else:
        s = torch.as_tensor(seed).to(torch.int64).reshape(-1)[0]
    return s & _MASK32, (s >> 32) & _MASK32


def device_offset(seed) -> Optional[torch.Tensor]:
    """seed[1] of a seed tensor ``[2]`` = (key, sample offset): an int64 [] tensor added to every
    sample index, or None for an int or a ``[]``/``[1]`` seed (docs/ops_contract.md)."""
    if isinstance(seed, torch.Tensor) and seed.numel() == 2:
        return seed.reshape(2)[1].to(torch.int64)
    return None


def check_sample_offset(sample_offset, batch: int, seed=None) -> int:
    """sample_offset as validated for every backend: an int >= 0 with sample_offset + batch <=
    2**32, since the sample index n = sample_offset + b is one 32-bit counter word (beyond it two
    samples would share their noise; docs/ops_contract.md). With a seed ``[2]`` on the CPU the
    sum sample_offset + seed[1] + batch is checked (a plain read of host memory); on another device
    it is the caller's contract (no host sync): the kernels use the index modulo 2**32. Skipped
    while torch.compile traces (a data-dependent check cannot be traced)."""
    if not isinstance(sample_offset, int) or isinstance(sample_offset, bool) or sample_offset < 0:
        raise ValueError(f"sample_offset must be an int >= 0, got {sample_offset!r}")
    if sample_offset + batch > COUNTER_WORD_END:
        raise ValueError(f"sample_offset + batch must be <= 2**32 (the sample index is one 32-bit Philox "
                         f"counter word), got sample_offset={sample_offset}, batch={batch}")
    k = device_offset(seed)
    if k is not None and k.device.type == "cpu" and not torch.compiler.is_compiling():
        k = int(k)
        if k < 0:
            raise ValueError(f"seed[1] (the device sample offset) must be >= 0, got {k}")
        if sample_offset + k + batch > COUNTER_WORD_END:
            raise ValueError(f"sample_offset + seed[1] + batch must be <= 2**32 (the sample index is one 32-bit "
                             f"Philox counter word), got sample_offset={sample_offset}, seed[1]={k}, batch={batch}")
    return sample_offset


def philox_words(seed, numel: int, batch: int, timestep, sample_offset: int = 0,
                 stream: int = STREAM_STEP, device=None) -> torch.Tensor:
    """Words ``[batch, numel]`` (int64 holding uint32) for elements 0..numel-1 of samples
    sample_offset..sample_offset+batch-1 (plus seed[1] for a seed ``[2]`` = (key, device offset)).
    ``timestep`` is an int or an int tensor ``[]``/``[batch]``."""
    check_sample_offset(sample_offset, batch, seed)
    k0, k1 = split_seed(seed)
    device = device if device is not None else k0.device
    k0, k1 = k0.to(device), k1.to(device)
    nq = (numel + 3) // 4
    c0 = torch.arange(nq, device=device, dtype=torch.int64).view(1, nq)
    c1 = torch.arange(batch, device=device, dtype=torch.int64) + sample_offset
    k = device_offset(seed)
    if k is not None:   # a tensor add: read on the device (philox4x32_10 takes it modulo 2**32)
        c1 = c1 + k.to(device)
    c1 = c1.view(batch, 1)
    t = torch.as_tensor(timestep, device=device).to(torch.int64)
    c2 = t.view(-1, 1) if t.dim() > 0 else t
    words = philox4x32_10(c0, c1, c2, stream, k0, k1)
    out = torch.stack(torch.broadcast_tensors(*words), dim=-1)   # [batch, nq, 4]
    return out.reshape(batch, nq * 4)[:, :numel]


def uniform_from_words(w: torch.Tensor) -> torch.Tensor:
    """u = ((w >> 9) + 0.5) * 2**-23: exact in float32, in (0, 1) so log(u) is finite."""
    return ((w >> 9).to(torch.float32) + 0.5) * (2.0 ** -23)


def normal_from_words(w: torch.Tensor) -> torch.Tensor:
    """Box-Muller on word pairs (0,1) and (2,3) of each counter; w is ``[..., 4k]``."""
    u = uniform_from_words(w).unflatten(-1, (-1, 2))           # [..., 2k, 2]
    r = torch.sqrt(-2.0 * torch.log(u[..., 0]))
    theta = u[..., 1] * TWO_PI_F32
    return torch.stack([r * torch.cos(theta), r * torch.sin(theta)], dim=-1).flatten(-2)


def philox_uniform(seed, shape, timestep=0, sample_offset: int = 0, stream: int = STREAM_STEP,
                   device=None) -> torch.Tensor:
    """Uniforms of shape ``shape = (B, *rest)``: element e of sample b from counter
    (e // 4, sample_offset + b, timestep[b], stream)."""
    B, n = shape[0], _prod(shape[1:])
    w = philox_words(seed, n, B, timestep, sample_offset, stream, device)
    return uniform_from_words(w).reshape(shape)


def philox_normal(seed, shape, timestep=0, sample_offset: int = 0, stream: int = STREAM_STEP,
                  device=None) -> torch.Tensor:
    """Standard normals (float32) of shape ``(B, *rest)``, same counters as ``philox_uniform``."""
    B, n = shape[0], _prod(shape[1:])
    n4 = (n + 3) // 4 * 4
    w = philox_words(seed, n4, B, timestep, sample_offset, stream, device)
    return normal_from_words(w)[:, :n].reshape(shape)


def _prod(xs) -> int:
    p = 1
    for x in xs:
        p *= int(x)
    return p
