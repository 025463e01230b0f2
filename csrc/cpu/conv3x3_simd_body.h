// The three stages of conv3x3.cpp's Winograd F(2x2, 3x3) convolution for one block of output tiles,
// written once for a lane type: included inside conv3x3.cpp's `#pragma GCC target` region after
// the lane vocabulary (kW lanes of VF: splat_f, vloadu, vstoreu, vadd, vsub, vfma). No include
// guard, no torch header.
//
// Notation (Lavin & Gray, "Fast Algorithms for Convolutional Neural Networks", 2016): a 2x2 output
// tile y = A^T [ (G g G^T) .* (B^T d B) ] A for its 4x4 input patch d and a 3x3 filter g, the
// element-wise product summed over input channels. The 16 positions xi = 4 i + j of the 4x4
// transformed domain are 16 independent GEMMs [tiles, C] x [C, K].

// V[xi][t][cp] = (B^T d_t B)[xi] for the tiles t < nt of the block and every channel (vectorised
// over channels): d_t is the 4x4 patch at xp + tile_at(t), in the padded channels-last scratch
// (row stride wp * cp, pixel stride cp). Tiles nt <= t < ntp are zero (the GEMM's padding).
template <class TileAt>
inline void input_transform(const float* xp, int64_t wp, int64_t cp, int64_t nt, int64_t ntp, const TileAt& tile_at,
                            float* V, int64_t v_xi) {
  const int64_t row = wp * cp;
  for (int64_t t = 0; t < ntp; ++t) {
    if (t >= nt) {
      for (int xi = 0; xi < 16; ++xi)
        for (int64_t c = 0; c < cp; c += kW) vstoreu(V + xi * v_xi + t * cp + c, splat_f(0.0f));
      continue;
    }
    const float* base = xp + tile_at(t);
    for (int64_t c = 0; c < cp; c += kW) {
      VF r[4][4];  // B^T d: rows combined, column by column
      for (int j = 0; j < 4; ++j) {
        const VF d0 = vloadu(base + j * cp + c), d1 = vloadu(base + row + j * cp + c);
        const VF d2 = vloadu(base + 2 * row + j * cp + c), d3 = vloadu(base + 3 * row + j * cp + c);
        r[0][j] = vsub(d0, d2);
        r[1][j] = vadd(d1, d2);
        r[2][j] = vsub(d2, d1);
        r[3][j] = vsub(d1, d3);
      }
      for (int i = 0; i < 4; ++i) {  // (B^T d) B: columns combined
        float* v = V + (4 * i) * v_xi + t * cp + c;
        vstoreu(v, vsub(r[i][0], r[i][2]));
        vstoreu(v + v_xi, vadd(r[i][1], r[i][2]));
        vstoreu(v + 2 * v_xi, vsub(r[i][2], r[i][1]));
        vstoreu(v + 3 * v_xi, vsub(r[i][1], r[i][3]));
      }
    }
  }
}

// M[t][0:KV kW] = sum_c V[t][c] U[c][0:KV kW] for kTiles tiles (rows ldv apart) and KV vectors of
// output channels (U rows ldu apart): kTiles x KV accumulators, each U vector loaded once for
// the kTiles tiles, each V value broadcast once for the KV vectors.
template <int kTiles, int KV>
inline void gemm_block(const float* V, int64_t ldv, const float* U, int64_t ldu, int64_t cp, float* M,
                       int64_t ldm) {
  VF acc[kTiles][KV];
  for (int t = 0; t < kTiles; ++t)
    for (int v = 0; v < KV; ++v) acc[t][v] = splat_f(0.0f);
  for (int64_t c = 0; c < cp; ++c) {
    VF u[KV];
    for (int v = 0; v < KV; ++v) u[v] = vloadu(U + c * ldu + v * kW);
    for (int t = 0; t < kTiles; ++t) {
      const VF b = splat_f(V[t * ldv + c]);
      for (int v = 0; v < KV; ++v) acc[t][v] = vfma(b, u[v], acc[t][v]);
    }
  }
  for (int t = 0; t < kTiles; ++t)
    for (int v = 0; v < KV; ++v) vstoreu(M + t * ldm + v * kW, acc[t][v]);
}

// The 16 GEMMs of a block: M[xi][t][kp] = sum_c V[xi][t][c] U[xi][c][kp], ntp a multiple of kTiles,
// kp of kKv kW.
inline void transformed_gemms(const float* V, int64_t v_xi, const float* U, int64_t cp, int64_t kp, int64_t ntp,
                              float* M, int64_t m_xi) {
  for (int xi = 0; xi < 16; ++xi)
    for (int64_t k = 0; k < kp; k += kKv * kW)
      for (int64_t t = 0; t < ntp; t += kTiles)
        gemm_block<kTiles, kKv>(V + xi * v_xi + t * cp, cp, U + xi * cp * kp + k, kp, cp, M + xi * m_xi + t * kp + k, kp);
}

// y = A^T m A + bias for the tiles t < nt of the block, vectorised over output channels, stored
// channels-last through store(t, i, j, k, value) (which clips tiles at the image's edge and the
// last partial vector of channels).
template <class Store>
inline void output_transform(const float* M, int64_t m_xi, int64_t kp, int64_t k_end, int64_t nt, const float* bias,
                             const Store& store) {
  for (int64_t t = 0; t < nt; ++t) {
    for (int64_t k = 0; k < k_end; k += kW) {
      VF s[4][2];  // m A: columns combined, row by row
      for (int i = 0; i < 4; ++i) {
        const float* m = M + (4 * i) * m_xi + t * kp + k;
        const VF m0 = vloadu(m), m1 = vloadu(m + m_xi), m2 = vloadu(m + 2 * m_xi), m3 = vloadu(m + 3 * m_xi);
        s[i][0] = vadd(vadd(m0, m1), m2);
        s[i][1] = vsub(vsub(m1, m2), m3);
      }
      const VF b = vloadu(bias + k);
      for (int j = 0; j < 2; ++j) {  // A^T (m A): rows combined
        store(t, 0, j, k, vadd(vadd(vadd(s[0][j], s[1][j]), s[2][j]), b));
        store(t, 1, j, k, vadd(vsub(vsub(s[1][j], s[2][j]), s[3][j]), b));
      }
    }
  }
}
