// exp's range reduction and polynomial on kW lanes, written once for the SIMD bodies that need
// exp to ~1 ulp (groupnorm_simd_body.h's SiLU, whose contract is 3 ulp), which include it inside
// each instruction-set region after the lane type's splat_f, vfma, vmul and vadd. The softmax of
// attention_simd_body.h needs only absolute accuracy against its largest weight and has a cheaper
// reduction of its own. cpu_common.h exp_f32 is its scalar
// form: x = k ln 2 + r, |r| <= ln 2 / 2 with ln 2 in two parts (Cephes), exp(r) by Cephes' degree-6
// polynomial, ~1 ulp.
// No include guard: included once per instruction-set region.

// exp(x) / 2^k for k = kf = round(x / ln 2) (integral lanes): the caller applies 2^k.
inline VF exp_reduced(VF x, VF kf) {
  const VF r = vfma(kf, splat_f(2.12194440e-4f), vfma(kf, splat_f(-0.693359375f), x));
  VF p = splat_f(1.9875691500e-4f);
  p = vfma(p, r, splat_f(1.3981999507e-3f));
  p = vfma(p, r, splat_f(8.3334519073e-3f));
  p = vfma(p, r, splat_f(4.1665795894e-2f));
  p = vfma(p, r, splat_f(1.6666665459e-1f));
  p = vfma(p, r, splat_f(5.0000001201e-1f));
  return vadd(vfma(p, vmul(r, r), r), splat_f(1.0f));
}
