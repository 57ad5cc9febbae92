// The inner loops of the CPU multires_fuse, included twice by multires_fuse.cpp: once for the baseline ISA and
// once with every function compiled for AVX2 + FMA + F16C (picked at run time). Each inclusion sits in its own
// namespace and defines HRNET_FAST_TARGET (the function attributes) and HRNET_FAST_AVX2 (1 where the explicit
// 8-lane code may be used). No include guard, on purpose; includes live in multires_fuse.cpp.
//
// A task walks a flat range of the output in pieces of at most kChunk positions and sums, per 8-lane vector in
// registers and in fp32: x, each low_res term (read in place: nearest through a per-plane gather table in NCHW, as
// the contiguous channels of one low-res pixel in NHWC; bilinear as the fp32 blend of the four low-res pixels
// around each output pixel, per piece into an L1 buffer in NCHW, directly from their channels in NHWC), each
// same_res term; then ReLU and one rounding store.

// --- scalar T <-> fp32 ---------------------------------------------------------------------------------------

HRNET_FAST_TARGET inline float to_float(float v) { return v; }
HRNET_FAST_TARGET inline float to_float(c10::BFloat16 v) {
  const uint32_t bits = static_cast<uint32_t>(v.x) << 16;  // bf16 is the top half of an fp32
  float f;
  std::memcpy(&f, &bits, sizeof(f));
  return f;
}
HRNET_FAST_TARGET inline float to_float(c10::Half v) {
#if HRNET_FAST_AVX2
  return _cvtsh_ss(v.x);
#else
  return static_cast<float>(v);
#endif
}

HRNET_FAST_TARGET inline void from_float(float f, float* out) { *out = f; }
HRNET_FAST_TARGET inline void from_float(float f, c10::BFloat16* out) {
  // Round to nearest even, NaN kept NaN: the same bits as c10::BFloat16(f).
  uint32_t bits;
  std::memcpy(&bits, &f, sizeof(bits));
  const uint32_t rounded = (bits + 0x7fffu + ((bits >> 16) & 1u)) >> 16;
  out->x = static_cast<uint16_t>(f != f ? 0x7fc0u : rounded);
}
HRNET_FAST_TARGET inline void from_float(float f, c10::Half* out) {
#if HRNET_FAST_AVX2
  out->x = _cvtss_sh(f, _MM_FROUND_TO_NEAREST_INT);
#else
  *out = c10::Half(f);
#endif
}

// `a < 0 ? 0 : a` rather than max(a, 0): NaN stays NaN, as in torch.relu.
HRNET_FAST_TARGET inline float relu_f(float a) { return a < 0.f ? 0.f : a; }

#if HRNET_FAST_AVX2
// --- 8 lanes of T <-> __m256 (same rounding as the scalar versions) ------------------------------------------

HRNET_FAST_TARGET inline __m256 load8(const float* p) { return _mm256_loadu_ps(p); }
HRNET_FAST_TARGET inline __m256 load8(const c10::BFloat16* p) {
  const __m256i widened = _mm256_cvtepu16_epi32(_mm_loadu_si128(reinterpret_cast<const __m128i*>(p)));
  return _mm256_castsi256_ps(_mm256_slli_epi32(widened, 16));
}
HRNET_FAST_TARGET inline __m256 load8(const c10::Half* p) {
  return _mm256_cvtph_ps(_mm_loadu_si128(reinterpret_cast<const __m128i*>(p)));
}

HRNET_FAST_TARGET inline void store8(float* p, __m256 v) { _mm256_storeu_ps(p, v); }
HRNET_FAST_TARGET inline void store8(c10::BFloat16* p, __m256 v) {
  const __m256i bits = _mm256_castps_si256(v);
  const __m256i lsb = _mm256_and_si256(_mm256_srli_epi32(bits, 16), _mm256_set1_epi32(1));
  __m256i rounded = _mm256_srli_epi32(_mm256_add_epi32(bits, _mm256_add_epi32(lsb, _mm256_set1_epi32(0x7fff))), 16);
  const __m256i nan = _mm256_castps_si256(_mm256_cmp_ps(v, v, _CMP_UNORD_Q));
  rounded = _mm256_blendv_epi8(rounded, _mm256_set1_epi32(0x7fc0), nan);
  // Pack the eight 32-bit lanes (values < 2^16) to 16 bits; packus works per 128-bit half, so fix the order.
  const __m256i packed = _mm256_permute4x64_epi64(_mm256_packus_epi32(rounded, rounded), 0x08);
  _mm_storeu_si128(reinterpret_cast<__m128i*>(p), _mm256_castsi256_si128(packed));
}
HRNET_FAST_TARGET inline void store8(c10::Half* p, __m256 v) {
  _mm_storeu_si128(reinterpret_cast<__m128i*>(p), _mm256_cvtps_ph(v, _MM_FROUND_TO_NEAREST_INT));
}

HRNET_FAST_TARGET inline __m256 relu8(__m256 a) {
  // Lanes with a < 0 (false for NaN) become 0.
  return _mm256_andnot_ps(_mm256_cmp_ps(a, _mm256_setzero_ps(), _CMP_LT_OQ), a);
}
#endif

// --- passes over a chunk -------------------------------------------------------------------------------------

// dst[i] = float(src[i])
template <typename T>
HRNET_FAST_TARGET inline void load_chunk(const T* __restrict src, float* __restrict dst, int64_t n) {
  int64_t i = 0;
#if HRNET_FAST_AVX2
  for (; i + 8 <= n; i += 8) _mm256_storeu_ps(dst + i, load8(src + i));
#endif
  for (; i < n; ++i) dst[i] = to_float(src[i]);
}

// --- low_res windows ----------------------------------------------------------------------------------------

// NCHW: plane position p = h * W + w of low_res term j reads element v.low_index[j][p] = (h >> s) * Wz + (w >> s)
// of its low-res plane. A piece of a plane reads a window of that plane (the low-res rows it touches): fp32
// values at z[index[p] - offset], index[p] - offset in [0, readable).
struct LowResWindow {
  const float* z;
  const int32_t* index;  // the plane's table, from the piece's first position
  int32_t offset;
  int32_t readable;
};

// The window of term j for positions [p0, p0 + len) of plane `plane`; 16-bit inputs are widened into `zbuf`
// (v.zbuf_size floats).
template <typename T>
HRNET_FAST_TARGET inline LowResWindow low_res_window(const FuseView<T>& v, int j, int64_t plane, int64_t p0,
                                                     int64_t len, float* zbuf) {
  const int s = v.low_shift[j];
  const int64_t zw = v.low_w[j];
  const int64_t lo = ((p0 / v.W) >> s) * zw, hi = ((((p0 + len - 1) / v.W) >> s) + 1) * zw;
  const T* z = v.low[j] + plane * v.low_h[j] * zw + lo;
  LowResWindow w;
  if constexpr (std::is_same_v<T, float>) {
    w.z = z;
  } else {
    load_chunk(z, zbuf, hi - lo);
    w.z = zbuf;
  }
  w.index = v.low_index[j] + p0;
  w.offset = static_cast<int32_t>(lo);
  w.readable = static_cast<int32_t>(hi - lo);
  return w;
}

#if HRNET_FAST_AVX2
// Window values for piece positions t .. t + 7.
HRNET_FAST_TARGET inline __m256 low_res8(const LowResWindow& w, int64_t t) {
  const __m256i idx = _mm256_sub_epi32(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(w.index + t)),
                                       _mm256_set1_epi32(w.offset));
  const int32_t first = w.index[t] - w.offset;
  const __m256i lane = _mm256_sub_epi32(idx, _mm256_set1_epi32(first));
  // Every lane within [first, first + 8)? (Unsigned compare: lanes below `first` wrap to huge values.)
  const __m256i in_stretch = _mm256_cmpeq_epi32(_mm256_min_epu32(lane, _mm256_set1_epi32(7)), lane);
  if (_mm256_movemask_epi8(in_stretch) == -1 && first + 8 <= w.readable) {
    // One load spread by a permute is much cheaper than a gather; most vectors of wide rows take this path.
    return _mm256_permutevar8x32_ps(_mm256_loadu_ps(w.z + first), lane);
  }
  return _mm256_i32gather_ps(w.z, idx, 4);
}

// A low-res term already laid out like the output piece (an NHWC pixel's channels): a plain load.
template <typename T>
HRNET_FAST_TARGET inline __m256 low_res8(const T* z, int64_t t) {
  return load8(z + t);
}
#endif

HRNET_FAST_TARGET inline float low_res1(const LowResWindow& w, int64_t t) { return w.z[w.index[t] - w.offset]; }

template <typename T>
HRNET_FAST_TARGET inline float low_res1(const T* z, int64_t t) {
  return to_float(z[t]);
}

// --- bilinear terms (taps: csrc/bilinear.h) -------------------------------------------------------------------

// NHWC: the four low-res pixels around one output pixel, each pointing at the channel of the piece's first
// position, and their weights.
template <typename T>
struct BilinearPixel {
  const T *top0, *top1, *bottom0, *bottom1;  // rows i0 / i1 of the row taps, columns i0 / i1 of the column taps
  float row0, row1, col0, col1;
};

#if HRNET_FAST_AVX2
template <typename T>
HRNET_FAST_TARGET inline __m256 low_res8(const BilinearPixel<T>& b, int64_t t) {
  const __m256 col0 = _mm256_set1_ps(b.col0), col1 = _mm256_set1_ps(b.col1);
  const __m256 top = _mm256_fmadd_ps(col1, load8(b.top1 + t), _mm256_mul_ps(col0, load8(b.top0 + t)));
  const __m256 bottom = _mm256_fmadd_ps(col1, load8(b.bottom1 + t), _mm256_mul_ps(col0, load8(b.bottom0 + t)));
  return _mm256_fmadd_ps(_mm256_set1_ps(b.row1), bottom, _mm256_mul_ps(_mm256_set1_ps(b.row0), top));
}
#endif

template <typename T>
HRNET_FAST_TARGET inline float low_res1(const BilinearPixel<T>& b, int64_t t) {
  const float top = b.col0 * to_float(b.top0[t]) + b.col1 * to_float(b.top1[t]);
  const float bottom = b.col0 * to_float(b.bottom0[t]) + b.col1 * to_float(b.bottom1[t]);
  return b.row0 * top + b.row1 * bottom;
}

// dst[k] = l0 * r0[k] + l1 * r1[k] for k < n: two low-res rows blended, in fp32.
template <typename T>
HRNET_FAST_TARGET inline void blend_rows(const T* r0, const T* r1, float l0, float l1, float* dst, int64_t n) {
  int64_t k = 0;
#if HRNET_FAST_AVX2
  const __m256 w0 = _mm256_set1_ps(l0), w1 = _mm256_set1_ps(l1);
  for (; k + 8 <= n; k += 8) {
    _mm256_storeu_ps(dst + k, _mm256_fmadd_ps(w1, load8(r1 + k), _mm256_mul_ps(w0, load8(r0 + k))));
  }
#endif
  for (; k < n; ++k) dst[k] = l0 * to_float(r0[k]) + l1 * to_float(r1[k]);
}

// out[i] = l0[i] * blend[i0[i] - k0] + l1[i] * blend[i1[i] - k0] for i < n: the column taps of n consecutive output
// columns applied to blended rows that start at low-res column k0. `blend` may be read up to 8 floats past its
// last blended column.
HRNET_FAST_TARGET inline void blend_columns(const float* blend, const TapView& cols, int64_t w, int32_t k0,
                                            float* out, int64_t n) {
  const int32_t *i0 = cols.i0 + w, *i1 = cols.i1 + w;
  const float *l0 = cols.l0 + w, *l1 = cols.l1 + w;
  int64_t i = 0;
#if HRNET_FAST_AVX2
  for (; i + 8 <= n; i += 8) {
    const __m256i a = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(i0 + i));
    const __m256i b = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(i1 + i));
    __m256 left, right;
    // Taps only grow with the column: when the 8 columns read fewer than 8 blended values (any upsampling by
    // more than 8/7), one load spread by two permutes replaces two gathers.
    if (i1[i + 7] - i0[i] < 8) {
      const __m256 window = _mm256_loadu_ps(blend + (i0[i] - k0));
      const __m256i first = _mm256_set1_epi32(i0[i]);
      left = _mm256_permutevar8x32_ps(window, _mm256_sub_epi32(a, first));
      right = _mm256_permutevar8x32_ps(window, _mm256_sub_epi32(b, first));
    } else {
      const __m256i first = _mm256_set1_epi32(k0);
      left = _mm256_i32gather_ps(blend, _mm256_sub_epi32(a, first), 4);
      right = _mm256_i32gather_ps(blend, _mm256_sub_epi32(b, first), 4);
    }
    const __m256 weighted_left = _mm256_mul_ps(_mm256_loadu_ps(l0 + i), left);
    _mm256_storeu_ps(out + i, _mm256_fmadd_ps(_mm256_loadu_ps(l1 + i), right, weighted_left));
  }
#endif
  for (; i < n; ++i) out[i] = l0[i] * blend[i0[i] - k0] + l1[i] * blend[i1[i] - k0];
}

// NCHW: bilinear term j at positions [p0, p0 + n) of plane `plane`, in fp32 into out[0, n). Per output row, the
// two low-res rows it reads are blended over the columns it reads (contiguous loads), then each output column
// blends its two columns of that. `blend` holds v.low_w[j] + 8 floats.
template <typename T>
HRNET_FAST_TARGET inline void bilinear_piece(const FuseView<T>& v, int j, int64_t plane, int64_t p0, int64_t n,
                                             float* out, float* blend) {
  const TapView &rows = v.row_taps[j], &cols = v.col_taps[j];
  const int64_t zw = v.low_w[j];
  const T* z = v.low[j] + plane * v.low_h[j] * zw;
  for (int64_t done = 0; done < n;) {
    const int64_t p = p0 + done, h = p / v.W, w = p % v.W, len = std::min(v.W - w, n - done);
    const int32_t k0 = cols.i0[w], k1 = cols.i1[w + len - 1];  // taps only grow with w
    blend_rows(z + rows.i0[h] * zw + k0, z + rows.i1[h] * zw + k0, rows.l0[h], rows.l1[h], blend, k1 - k0 + 1);
    blend_columns(blend, cols, w, k0, out + done, len);
    done += len;
  }
}

// --- one task ------------------------------------------------------------------------------------------------

// out[i] = T(relu?(x[i] + sum_j low[j](i) + same[0][i] + ... + same[NS-1][i])) over one piece of n positions,
// every term summed in registers. `Low` is a LowResWindow (NCHW) or a pointer (NHWC); NS is a template
// argument so the same_res loop unrolls.
template <int NS, typename Low, typename T>
HRNET_FAST_TARGET inline void fuse_piece(const T* x, const Low* low, int n_low, const T* const* same, T* out,
                                         int64_t n, bool relu) {
#if HRNET_FAST_AVX2
  if (n >= 8) {
    auto sum8 = [&](int64_t i) HRNET_FAST_TARGET {
      __m256 v = load8(x + i);
      for (int j = 0; j < n_low; ++j) v = _mm256_add_ps(v, low_res8(low[j], i));
      for (int k = 0; k < NS; ++k) v = _mm256_add_ps(v, load8(same[k] + i));
      return relu ? relu8(v) : v;
    };
    // A ragged end is one more vector ending at n, overlapping the previous one. It is summed before anything
    // is stored, so an in-place call (out == x) still reads only inputs.
    const bool ragged = n % 8 != 0;
    const __m256 last = ragged ? sum8(n - 8) : _mm256_setzero_ps();
    for (int64_t i = 0; i + 8 <= n; i += 8) store8(out + i, sum8(i));
    if (ragged) store8(out + n - 8, last);
    return;
  }
#endif
  for (int64_t i = 0; i < n; ++i) {
    float v = to_float(x[i]);
    for (int j = 0; j < n_low; ++j) v += low_res1(low[j], i);
    for (int k = 0; k < NS; ++k) v += to_float(same[k][i]);
    from_float(relu ? relu_f(v) : v, out + i);
  }
}

// NHWC output positions [begin, end) as single pixels' channels: piece(b, n, low) with low[j] = term(j, image, h,
// w, c0), the j-th low-res term's reader for pixel (image, h, w) from channel c0 on. Pixel coordinates advance
// incrementally: no divisions per pixel.
template <typename T, typename Piece, typename Term>
HRNET_FAST_TARGET inline void nhwc_pieces(const FuseView<T>& v, int64_t begin, int64_t end, Piece&& piece,
                                          Term&& term) {
  decltype(term(0, int64_t{0}, int64_t{0}, int64_t{0}, int64_t{0})) low[kMaxTerms];
  const int64_t pixel = begin / v.C;
  int64_t c0 = begin % v.C, w = pixel % v.W, h = (pixel / v.W) % v.H, image = pixel / (v.W * v.H);
  for (int64_t b = begin; b < end;) {
    const int64_t n = std::min(end - b, v.C - c0);
    for (int j = 0; j < v.n_low; ++j) low[j] = term(j, image, h, w, c0);
    piece(b, n, low);
    b += n;
    c0 = 0;
    if (++w == v.W) {
      w = 0;
      if (++h == v.H) {
        h = 0;
        ++image;
      }
    }
  }
}

// Output positions [begin, end), in memory order, with NS same_res terms, in pieces: of at most kChunk positions
// that never cross an NCHW plane (one gather window or bilinear buffer per term), or single NHWC pixels (each
// low-res pixel read is then one contiguous run of channels).
template <int NS, typename T>
HRNET_FAST_TARGET void fuse_range_ns(const FuseView<T>& v, int64_t begin, int64_t end) {
  const T* same[kMaxTerms];
  auto piece = [&](int64_t b, int64_t n, const auto* low) HRNET_FAST_TARGET {
    for (int k = 0; k < NS; ++k) same[k] = v.same[k] + b;
    fuse_piece<NS>(v.x + b, low, v.n_low, same, v.out + b, n, v.relu);
  };
  const int64_t plane_len = v.H * v.W;
  // NCHW pieces: positions [b, b + n) of one plane, set up by prepare(plane, p0, n).
  auto nchw_pieces = [&](auto&& prepare) HRNET_FAST_TARGET {
    for (int64_t b = begin; b < end;) {
      const int64_t plane = b / plane_len, p0 = b % plane_len;
      const int64_t n = std::min({kChunk, end - b, plane_len - p0});
      piece(b, n, prepare(plane, p0, n));
      b += n;
    }
  };
  if (v.n_low == 0) {
    for (int64_t b = begin; b < end; b += kChunk) piece(b, std::min(kChunk, end - b), static_cast<const T**>(nullptr));
  } else if (v.bilinear && !v.channels_last) {
    std::vector<float> buf(v.n_low * kChunk + v.zbuf_size);
    const float* low[kMaxTerms];
    nchw_pieces([&](int64_t plane, int64_t p0, int64_t n) HRNET_FAST_TARGET {
      for (int j = 0; j < v.n_low; ++j) {
        bilinear_piece(v, j, plane, p0, n, buf.data() + j * kChunk, buf.data() + v.n_low * kChunk);
        low[j] = buf.data() + j * kChunk;
      }
      return low;
    });
  } else if (!v.channels_last) {
    std::vector<float> zbuf(std::is_same_v<T, float> ? 0 : v.n_low * v.zbuf_size);
    LowResWindow low[kMaxTerms];
    nchw_pieces([&](int64_t plane, int64_t p0, int64_t n) HRNET_FAST_TARGET {
      for (int j = 0; j < v.n_low; ++j) low[j] = low_res_window(v, j, plane, p0, n, zbuf.data() + j * v.zbuf_size);
      return low;
    });
  } else if (v.bilinear) {
    nhwc_pieces(v, begin, end, piece, [&](int j, int64_t image, int64_t h, int64_t w, int64_t c0) HRNET_FAST_TARGET {
      const TapView &rows = v.row_taps[j], &cols = v.col_taps[j];
      const int64_t zw = v.low_w[j], r0 = rows.i0[h] * zw, r1 = rows.i1[h] * zw;
      const T* z = v.low[j] + image * v.low_h[j] * zw * v.C + c0;
      return BilinearPixel<T>{z + (r0 + cols.i0[w]) * v.C, z + (r0 + cols.i1[w]) * v.C,
                              z + (r1 + cols.i0[w]) * v.C, z + (r1 + cols.i1[w]) * v.C,
                              rows.l0[h], rows.l1[h], cols.l0[w], cols.l1[w]};
    });
  } else {
    nhwc_pieces(v, begin, end, piece, [&](int j, int64_t image, int64_t h, int64_t w, int64_t c0) HRNET_FAST_TARGET {
      const int s = v.low_shift[j];
      return v.low[j] + ((image * v.low_h[j] + (h >> s)) * v.low_w[j] + (w >> s)) * v.C + c0;
    });
  }
}

template <typename T>
HRNET_FAST_TARGET void fuse_range(const FuseView<T>& v, int64_t begin, int64_t end) {
  static_assert(kMaxTerms == 4, "one case per same_res count");
  switch (v.n_same) {
    case 0: return fuse_range_ns<0>(v, begin, end);
    case 1: return fuse_range_ns<1>(v, begin, end);
    case 2: return fuse_range_ns<2>(v, begin, end);
    case 3: return fuse_range_ns<3>(v, begin, end);
    default: return fuse_range_ns<4>(v, begin, end);
  }
}
