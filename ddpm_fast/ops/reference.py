"""Reference backend: every fused op in plain PyTorch, any device. The executable form of
docs/ops_contract.md, and the twin every fused kernel is tested against.

One function per op of the op table (ops/table.py), named after it; its signature is the backend
interface every backend implements (already validated, enums as ints, seed as an int64 tensor).
Users call the friendly functions in ``ddpm_fast.ops``.
"""
from __future__ import annotations

import sys
from typing import Optional

import torch
import torch.nn.functional as F

from .. import noise as _noise
from ..noise import STREAM_Q_SAMPLE, STREAM_STEP
from ..schedule import Col
from .dispatch import register_backend
from .enums import (MS_HISTORY, MS_X, MS_X0, MS_X0_M, MS_X0_X, PRED_EPSILON, PRED_SAMPLE,
                    TEMB_AFTER_NORM, TEMB_BEFORE_NORM, VAR_FIXED_SMALL)
from .registration import implementations_of

BACKEND = "reference"


def _coef(table: torch.Tensor, t: torch.Tensor, col: int, ndim: int, dtype=torch.float32) -> torch.Tensor:
    """table[t, col] as float32 shaped to broadcast over a [B, ...] tensor of rank ndim."""
    # index_select, not table[t, col]: indexing with a 0-dim device tensor is an .item() (a sync)
    c = table.index_select(0, t.reshape(-1).long())[:, col].to(dtype)
    return c.reshape(-1, *([1] * (ndim - 1))) if t.dim() > 0 else c.reshape(())


def _compute_dtype(x: torch.Tensor) -> torch.dtype:
    return torch.float64 if x.dtype == torch.float64 else torch.float32


def _noise_like(x: torch.Tensor, seed: torch.Tensor, t: torch.Tensor, sample_offset: int, stream: int):
    return _noise.philox_normal(seed, tuple(x.shape), t, sample_offset, stream, device=x.device)


def philox_normal(seed, t, batch: int, numel: int, sample_offset: int, stream: int):
    return _noise.philox_normal(seed, (batch, numel), t, sample_offset, stream, device=seed.device)


def philox_uniform(seed, t, batch: int, numel: int, sample_offset: int, stream: int):
    return _noise.philox_uniform(seed, (batch, numel), t, sample_offset, stream, device=seed.device)


def q_sample(x0, t, table, noise):
    cd = _compute_dtype(x0)
    a = _coef(table, t, Col.SQRT_ALPHA_BAR, x0.dim(), cd)
    s = _coef(table, t, Col.SQRT_ONE_MINUS_ALPHA_BAR, x0.dim(), cd)
    return (a * x0.to(cd) + s * noise.to(cd)).to(x0.dtype)


def q_sample_seeded(x0, t, table, seed, sample_offset: int, target_type: int):
    cd = _compute_dtype(x0)
    eps = _noise_like(x0, seed, t, sample_offset, STREAM_Q_SAMPLE).to(cd)
    a = _coef(table, t, Col.SQRT_ALPHA_BAR, x0.dim(), cd)
    s = _coef(table, t, Col.SQRT_ONE_MINUS_ALPHA_BAR, x0.dim(), cd)
    x = x0.to(cd)
    x_t = a * x + s * eps
    if target_type == PRED_EPSILON:
        target = eps
    elif target_type == PRED_SAMPLE:
        target = x
    else:
        target = a * eps - s * x
    return x_t.to(x0.dtype), target.to(x0.dtype)


def predict_x0(x, m, table, t, prediction_type: int, cd):
    """x0 from the model output m, by prediction type (step 1 of the contract)."""
    if prediction_type == PRED_EPSILON:
        return (_coef(table, t, Col.SQRT_RECIP_ALPHA_BAR, x.dim(), cd) * x
                - _coef(table, t, Col.SQRT_RECIPM1_ALPHA_BAR, x.dim(), cd) * m)
    if prediction_type == PRED_SAMPLE:
        return m
    return (_coef(table, t, Col.SQRT_ALPHA_BAR, x.dim(), cd) * x
            - _coef(table, t, Col.SQRT_ONE_MINUS_ALPHA_BAR, x.dim(), cd) * m)


def guided_output(model_out: torch.Tensor, guidance_scale: Optional[float], dtype) -> torch.Tensor:
    """The model output the step uses, in ``dtype``: model_out itself, or with classifier-free
    guidance m_u + w (m_c - m_u) from model_out [2B, ...] (conditional rows first), diffusers'
    formula and order of operations."""
    if guidance_scale is None:
        return model_out.to(dtype)
    B = model_out.shape[0] // 2
    m_c, m_u = model_out[:B].to(dtype), model_out[B:].to(dtype)
    return m_u + guidance_scale * (m_c - m_u)


def reverse_step(x_t, model_out, t, table, noise: Optional[torch.Tensor], seed, sample_offset: int,
                 prediction_type: int, variance_type: int, clip: bool, clip_range: float,
                 guidance_scale: Optional[float] = None):
    cd = _compute_dtype(x_t)
    x, m = x_t.to(cd), guided_output(model_out, guidance_scale, cd)           # 0. guidance
    x0 = predict_x0(x, m, table, t, prediction_type, cd)                      # 1. predicted x0
    if clip:
        x0 = x0.clamp(-clip_range, clip_range)                                # 2. clip
    mean = (_coef(table, t, Col.POSTERIOR_MEAN_COEF1, x.dim(), cd) * x0       # 3. posterior mean
            + _coef(table, t, Col.POSTERIOR_MEAN_COEF2, x.dim(), cd) * x)     #    (Ho et al. eq. 7)
    col = Col.SIGMA_SMALL if variance_type == VAR_FIXED_SMALL else Col.SIGMA_LARGE
    sigma = _coef(table, t, col, x.dim(), cd) * _coef_mask_positive(t, x.dim(), cd)
    z = noise.to(cd) if noise is not None else _noise_like(x_t, seed, t, sample_offset, STREAM_STEP).to(cd)
    return (mean + sigma * z).to(x_t.dtype)                                   # 4. + sigma_t z, none at t=0


def reverse_step_out(x_t, model_out, t, table, noise: Optional[torch.Tensor], seed, sample_offset: int,
                     prediction_type: int, variance_type: int, clip: bool, clip_range: float,
                     guidance_scale: Optional[float], out: torch.Tensor,
                     first_bad: Optional[torch.Tensor] = None) -> None:
    """reverse_step written into ``out`` (may be x_t), with the NaN record (record_nonfinite)."""
    record_nonfinite(model_out, t, guidance_scale, first_bad)
    out.copy_(reverse_step(x_t, model_out, t, table, noise, seed, sample_offset, prediction_type, variance_type,
                           clip, clip_range, guidance_scale))


def record_nonfinite(model_out: torch.Tensor, t: torch.Tensor, guidance_scale: Optional[float],
                     first_bad: Optional[torch.Tensor]) -> None:
    """first_bad = max(first_bad, t[b] of every sample b whose model output has a NaN/inf element),
    both halves (rows b and B + b) with guidance: the record of the steps' out-variants
    (docs/ops_contract.md). Tensor ops only: no host sync."""
    if first_bad is None:
        return
    rows = model_out.shape[0]
    B = rows // 2 if guidance_scale is not None else rows
    if B == 0:
        return
    flat = model_out.reshape(rows, -1) if model_out.numel() else model_out.new_zeros((rows, 0))
    bad = ~torch.isfinite(flat).all(dim=1)                                    # [rows]
    if guidance_scale is not None:
        bad = bad[:B] | bad[B:]
    tb = t.reshape(-1).to(torch.int64).expand(B)
    worst = torch.where(bad, tb, torch.full_like(tb, -1)).max()
    first_bad.copy_(torch.maximum(first_bad, worst.reshape(first_bad.shape)))


def _coef_mask_positive(t: torch.Tensor, ndim: int, dtype) -> torch.Tensor:
    """1.0 where t > 0 else 0.0, shaped like _coef (a tensor op: no host sync)."""
    m = (t > 0).to(dtype)
    return m.reshape(-1, *([1] * (ndim - 1))) if m.dim() > 0 else m


def ddim_step(x_t, model_out, t, t_prev, table, noise: Optional[torch.Tensor], seed, sample_offset: int,
              eta: float, prediction_type: int, clip: bool, clip_range: float, final_alpha_bar: float,
              guidance_scale: Optional[float] = None):
    cd = _compute_dtype(x_t)
    x, m = x_t.to(cd), guided_output(model_out, guidance_scale, cd)
    a = _coef(table, t, Col.ALPHA_BAR, x.dim(), cd)
    tp = t_prev.long()
    a_prev_table = _coef(table, tp.clamp(min=0), Col.ALPHA_BAR, x.dim(), cd)
    final = torch.full_like(a_prev_table, final_alpha_bar)
    a_prev = torch.where(_shape_like(tp, x.dim()) >= 0, a_prev_table, final)
    sa, s1a = a.sqrt(), (1 - a).sqrt()
    if prediction_type == PRED_EPSILON:
        x0, eps = (x - s1a * m) / sa, m
    elif prediction_type == PRED_SAMPLE:
        x0 = m
        eps = (x - sa * x0) / s1a
    else:
        x0, eps = sa * x - s1a * m, sa * m + s1a * x
    if clip:  # clipping changes x0, so eps is re-derived from the clipped x0 (docs/pitfalls.md)
        x0 = x0.clamp(-clip_range, clip_range)
        eps = (x - sa * x0) / s1a
    # Song et al. eq. 16; 1 - a/a' < 0 where a' < a (final_alpha_bar below ᾱ_t): no posterior
    # variance there, so σ = 0 and eta = 0 stays exactly deterministic (docs/ops_contract.md)
    sigma = eta * ((1 - a_prev) / (1 - a)).sqrt() * (1 - a / a_prev).clamp(min=0).sqrt()
    direction = (1 - a_prev - sigma ** 2).clamp(min=0).sqrt() * eps
    out = a_prev.sqrt() * x0 + direction
    if eta > 0:
        z = noise.to(cd) if noise is not None else _noise_like(x_t, seed, t, sample_offset, STREAM_STEP).to(cd)
        out = out + sigma * z
    return out.to(x_t.dtype)


def ddim_step_out(x_t, model_out, t, t_prev, table, noise: Optional[torch.Tensor], seed, sample_offset: int,
                  eta: float, prediction_type: int, clip: bool, clip_range: float, final_alpha_bar: float,
                  guidance_scale: Optional[float], out: torch.Tensor,
                  first_bad: Optional[torch.Tensor] = None) -> None:
    """ddim_step written into ``out`` (may be x_t), with the NaN record (record_nonfinite)."""
    record_nonfinite(model_out, t, guidance_scale, first_bad)
    out.copy_(ddim_step(x_t, model_out, t, t_prev, table, noise, seed, sample_offset, eta, prediction_type,
                        clip, clip_range, final_alpha_bar, guidance_scale))


def _shape_like(v: torch.Tensor, ndim: int) -> torch.Tensor:
    return v.reshape(-1, *([1] * (ndim - 1))) if v.dim() > 0 else v


def multistep_update(x, model_out, history, table, step, guidance_scale: Optional[float] = None):
    """One multistep-solver step from its coefficient row (samplers/multistep.py builds the
    table): x0 = a·x + b·m; x_next = c_x·x + c_0·x0 + Σ_k c_k·history[k]. Returns (x_next, x0).
    With ``guidance_scale``, m is the guided output of a [2B, ...] model_out (guided_output)."""
    cd = _compute_dtype(x)
    row = table.index_select(0, step.reshape(-1).long()).reshape(-1).to(cd)   # a gather: no sync
    xc, m = x.to(cd), guided_output(model_out, guidance_scale, cd)
    x0 = row[MS_X0_X] * xc + row[MS_X0_M] * m
    out = row[MS_X] * xc + row[MS_X0] * x0
    for k in range(history.shape[0]):
        out = out + row[MS_HISTORY + k] * history[k].to(cd)
    return out.to(x.dtype), x0.to(x.dtype)


def temb_add(h, temb):
    cd = _compute_dtype(h)
    view = temb.reshape(*temb.shape, *([1] * (h.dim() - 2)))
    return (h.to(cd) + view.to(cd)).to(h.dtype)


def groupnorm_temb_silu(x, weight, bias, temb: Optional[torch.Tensor], num_groups: int, eps: float,
                        temb_mode: int, apply_silu: bool):
    cd = _compute_dtype(x)
    h = x.to(cd)
    view = None if temb is None else temb.reshape(*temb.shape, *([1] * (x.dim() - 2))).to(cd)
    if temb_mode == TEMB_BEFORE_NORM:
        h = h + view
    # the aten op, not F.group_norm: the latter refuses a single value per group ("Expected more
    # than 1 value per channel when training") where GroupNorm is defined, (x - mean) = 0
    h = torch.group_norm(h, num_groups, weight.to(cd), bias.to(cd), eps, False)
    if temb_mode == TEMB_AFTER_NORM:
        h = h + view
    if apply_silu:
        h = F.silu(h)
    return h.to(x.dtype)



def attention(q, k, v, scale: float):
    # softmax from its definition (torch.softmax subtracts the row max), math in float32 (float64 kept)
    cd = _compute_dtype(q)
    p = torch.softmax((q.to(cd) @ k.to(cd).transpose(-1, -2)) * scale, dim=-1)
    return (p @ v.to(cd)).to(q.dtype)


def conv3x3(x, weight, bias):
    # the direct convolution, math in float32 (float64 kept), in the fused kernel's channels-last layout
    cd = _compute_dtype(x)
    y = F.conv2d(x.to(cd), weight.to(cd), None if bias is None else bias.to(cd), padding=1)
    return y.to(x.dtype).contiguous(memory_format=torch.channels_last)


register_backend(BACKEND, implementations_of(sys.modules[__name__]))
