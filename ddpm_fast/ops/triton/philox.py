"""In-kernel Philox4x32-10 noise (the reference stream of ddpm_fast.noise) and the raw-stream ops.

Counter of element e of global sample n at timestep t in stream s: (e // 4, n, t, s), key =
the 64-bit seed; word e % 4 of the counter's four output words belongs to e. ``tl.philox(seed,
c0, c1, c2, c3)`` with the int64 seed (hi word = k1, lo word = k0) is exactly Philox4x32-10
(checked against Random123's known answers in tests/test_triton_philox.py).

A program draws its BLOCK elements as BLOCK // 4 counters (one Philox evaluation per four
elements, no redundant rounds), Box-Muller on word pairs (0,1) and (2,3), then interleaves the
four word-blocks back into element order with joins and a reshape (see _philox_block).
Box-Muller's cos/sin are sincos_0_2pi (θ in [0, 2π] only), not tl.cos/tl.sin: libdevice's
Payne-Hanek slow path for huge arguments (never taken here) made the 16-elements-per-thread
configs spill (up to 28 B, 80-108 registers); without it every config is spill-free with
<= 86 registers on sm_80/sm_90 (make gpu-check).
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl

from ._common import autotuned, elementwise_grid, launch, load_timestep, sample_block, seed_arg, seed_offset, timestep

TWO_PI_F32: tl.constexpr = tl.constexpr(6.2831854820251465)   # float32(2*pi), as ddpm_fast.noise
TWO_POW_M23: tl.constexpr = tl.constexpr(1.1920928955078125e-07)  # 2**-23


@triton.jit
def philox_words(seed, q, n, t, stream):
    """The four uint32 words of counters (q, n, t, stream); q a block of quad indices e // 4,
    n, t, stream scalars (any int type: truncated to 32 bits, as the reference masks them)."""
    z = tl.zeros(q.shape, dtype=tl.uint32)
    c0 = q.to(tl.uint32)
    c1 = z + n.to(tl.uint32)
    c2 = z + t.to(tl.uint32)
    c3 = (z + stream).to(tl.uint32)
    return tl.philox(seed, c0, c1, c2, c3)


@triton.jit
def uniform_from_word(w):
    """u = ((w >> 9) + 0.5) * 2**-23, exact in float32, in (0, 1)."""
    return ((w >> 9).to(tl.int32).to(tl.float32) + 0.5) * TWO_POW_M23


# sincos_0_2pi: θ - q π/2 with π/2 = PIO2_A + PIO2_B + PIO2_C (A, B short: q * A, q * B exact
# for q <= 4, and so are both subtractions), then minimax polynomials on [-π/4, π/4] (fitted for
# this file; float32 evaluation within 0.77 ulp for sin, 1.23 ulp for cos).
TWO_OVER_PI: tl.constexpr = tl.constexpr(0.6366197466850281)
PIO2_A: tl.constexpr = tl.constexpr(1.5703125)                 # 201 / 128
PIO2_B: tl.constexpr = tl.constexpr(0.000484466552734375)      # 254 / 2**19
PIO2_C: tl.constexpr = tl.constexpr(-6.397578431460715e-07)    # float32(π/2 - A - B)
SIN_1: tl.constexpr = tl.constexpr(-0.16666655242443085)
SIN_2: tl.constexpr = tl.constexpr(0.00833216030150652)
SIN_3: tl.constexpr = tl.constexpr(-0.00019515282474458218)
COS_2: tl.constexpr = tl.constexpr(0.04166664555668831)
COS_3: tl.constexpr = tl.constexpr(-0.0013887316454201937)
COS_4: tl.constexpr = tl.constexpr(2.44331567955669e-05)


@triton.jit
def sincos_0_2pi(th):
    """(cos θ, sin θ) for float32 θ in [0, 2π] (Box-Muller's angles), within ~1.5 ulp.

    tl.cos / tl.sin (libdevice) carry a Payne-Hanek slow path for |θ| > 105615 — a 28-byte
    local array per call and ~20 more live registers at the call sites — that these angles never
    take; a two-step exact reduction by the quadrant q = round(θ / (π/2)) in {0..4} suffices."""
    q = tl.floor(th * TWO_OVER_PI + 0.5)
    r = th - q * PIO2_A
    r = r - q * PIO2_B
    r = r - q * PIO2_C
    z = r * r
    s = r + r * z * (SIN_1 + z * (SIN_2 + z * SIN_3))
    c = 1.0 - 0.5 * z + z * z * (COS_2 + z * (COS_3 + z * COS_4))
    qi = q.to(tl.int32)
    odd = (qi & 1) != 0
    cos_v = tl.where(odd, s, c)
    sin_v = tl.where(odd, c, s)
    cos_v = tl.where(((qi + 1) & 2) != 0, -cos_v, cos_v)   # cos < 0 in quadrants 1, 2
    sin_v = tl.where((qi & 2) != 0, -sin_v, sin_v)         # sin < 0 in quadrants 2, 3
    return cos_v, sin_v


@triton.jit
def box_muller(wa, wb):
    """(r cos θ, r sin θ), r = sqrt(-2 log u_a), θ = 2π u_b (float32)."""
    r = tl.sqrt_rn(-2.0 * tl.log(uniform_from_word(wa)))
    th = uniform_from_word(wb) * TWO_PI_F32
    c, s = sincos_0_2pi(th)
    return r * c, r * s


@triton.jit
def _interleave4(v0, v1, v2, v3):
    """[R] x 4 -> [R, 2, 2] holding v0[r], v1[r], v2[r], v3[r] at flat index 4 r + k."""
    return tl.join(tl.join(v0, v2), tl.join(v1, v3))


@triton.jit
def _quad_values(seed, q, n, t, stream, NORMAL: tl.constexpr):
    """[R, 2, 2] values of quads q (a [R] block): 4 normals or 4 uniforms each, element order."""
    w0, w1, w2, w3 = philox_words(seed, q, n, t, stream)
    if NORMAL:
        z0, z1 = box_muller(w0, w1)
        z2, z3 = box_muller(w2, w3)
        return _interleave4(z0, z1, z2, z3)
    else:
        return _interleave4(uniform_from_word(w0), uniform_from_word(w1), uniform_from_word(w2),
                            uniform_from_word(w3))


@triton.jit
def _philox_block(seed, start, n, t, stream, BLOCK: tl.constexpr, QPT: tl.constexpr, NORMAL: tl.constexpr):
    """[BLOCK] values of elements start .. start + BLOCK - 1 (start % 4 == 0). Each thread gets
    4 * QPT consecutive elements, the width of one 16-byte access of the data (QPT 1 for float32,
    2 for 16-bit), so the result needs no shuffle through shared memory to meet the loads."""
    if QPT == 1:
        q = start // 4 + tl.arange(0, BLOCK // 4)
        return tl.reshape(_quad_values(seed, q, n, t, stream, NORMAL), [BLOCK])
    else:
        tl.static_assert(QPT == 2, "QPT must be 1 or 2")
        q = start // 4 + 2 * tl.arange(0, BLOCK // 8)
        even = _quad_values(seed, q, n, t, stream, NORMAL)          # [R, 2, 2]
        odd = _quad_values(seed, q + 1, n, t, stream, NORMAL)
        both = tl.permute(tl.join(even, odd), (0, 3, 1, 2))        # [R, 2 (even/odd), 2, 2]
        return tl.reshape(both, [BLOCK])


@triton.jit
def normal_block(seed, start, n, t, stream, BLOCK: tl.constexpr, QPT: tl.constexpr = 1):
    """Standard normals (float32 [BLOCK]) of elements start .. start + BLOCK - 1 (start % 4 == 0)
    of sample n at timestep t in ``stream``."""
    return _philox_block(seed, start, n, t, stream, BLOCK, QPT, True)


@triton.jit
def uniform_block(seed, start, n, t, stream, BLOCK: tl.constexpr, QPT: tl.constexpr = 1):
    """Uniforms (float32 [BLOCK]), same counters as ``normal_block``."""
    return _philox_block(seed, start, n, t, stream, BLOCK, QPT, False)


@triton.jit
def seeded_normal_block(seed_ptr, start, n, t, stream, BLOCK: tl.constexpr, QPT: tl.constexpr,
                        SEED_OFFSET: tl.constexpr):
    """``normal_block`` under the device seed: key seed_ptr[0]; with SEED_OFFSET (a seed [2] =
    (key, sample offset)) sample n counts from seed_ptr[1] on (c1 = n + seed[1] mod 2**32)."""
    if SEED_OFFSET:
        n = n + tl.load(seed_ptr + 1)
    return normal_block(tl.load(seed_ptr), start, n, t, stream, BLOCK, QPT)


@triton.jit
def philox_kernel(out_ptr, seed_ptr, t_ptr, sample_offset, stream, N,
                  T_STRIDE: tl.constexpr, NORMAL: tl.constexpr, SEED_OFFSET: tl.constexpr, BLOCK: tl.constexpr):
    """out[b, e] (float32 [B, N]) = normal or uniform of counter (e // 4, sample_offset + b, t[b], stream)
    (+ seed[1] in c1 with SEED_OFFSET)."""
    b, start = sample_block(N, BLOCK)
    offs = start + tl.arange(0, BLOCK)
    seed = tl.load(seed_ptr)
    t = load_timestep(t_ptr, b, T_STRIDE)
    n = sample_offset + b
    if SEED_OFFSET:
        n = n + tl.load(seed_ptr + 1)
    if NORMAL:
        v = normal_block(seed, start, n, t, stream, BLOCK)
    else:
        v = uniform_block(seed, start, n, t, stream, BLOCK)
    tl.store(out_ptr + b.to(tl.int64) * N + offs, v, mask=offs < N)


_philox_tuned = autotuned(philox_kernel, key=["N", "T_STRIDE", "NORMAL", "SEED_OFFSET"])


def _philox(seed, t, batch: int, numel: int, sample_offset: int, stream: int, normal: bool) -> torch.Tensor:
    out = torch.empty((batch, numel), dtype=torch.float32, device=seed.device)
    if batch == 0 or numel == 0:
        return out
    t, t_stride = timestep(t)
    launch(philox_kernel, _philox_tuned, elementwise_grid(batch, numel),
           (out, seed_arg(seed, t), t, sample_offset, stream, numel),
           {"T_STRIDE": t_stride, "NORMAL": normal, "SEED_OFFSET": seed_offset(seed)})
    return out


def philox_normal(seed, t, batch, numel, sample_offset, stream):
    """float32 [batch, numel] standard normals of the Philox stream (docs/ops_contract.md)."""
    return _philox(seed, t, batch, numel, sample_offset, stream, True)


def philox_uniform(seed, t, batch, numel, sample_offset, stream):
    """float32 [batch, numel] uniforms in (0, 1) of the Philox stream (bitwise = reference)."""
    return _philox(seed, t, batch, numel, sample_offset, stream, False)


__all__ = ["philox_words", "uniform_from_word", "box_muller", "normal_block", "uniform_block", "seeded_normal_block",
           "philox_normal", "philox_uniform"]
