// The inner loops of the CPU resize_argmax, included twice by resize_argmax.cpp: once for the baseline ISA and once
// with every function compiled for AVX2 + FMA + F16C (picked at run time). Each inclusion sits in its own
// namespace and defines HRNET_FAST_TARGET (the function attributes). No include guard, on purpose; includes live
// in resize_argmax.cpp.
//
// The blend order is the reference's (F.interpolate's CPU kernel): each of the two source rows is first blended
// across its two columns, then the two rows are blended. A source row's column blend, for every class and a stripe
// of output columns, is kept while consecutive output rows use it (an upsampling by f reuses it about 2f times), so
// per output pixel and class the argmax loop does one row blend and one comparison, vectorised over pixels.

template <typename T>
HRNET_FAST_TARGET inline float to_float(T v) {
  return static_cast<float>(v);
}

// blend[c * stride + x - x0] = l0[x] * z[c][i][i0[x]] + l1[x] * z[c][i][i1[x]] for output columns x0 <= x < x1
// of source row i of image n.
template <typename T>
HRNET_FAST_TARGET void blend_columns(const View<T>& v, int64_t n, int64_t i, int64_t x0, int64_t x1,
                                     int64_t stride, float* blend) {
  const int32_t *i0 = v.cols->i0.data(), *i1 = v.cols->i1.data();
  const float *l0 = v.cols->l0.data(), *l1 = v.cols->l1.data();
  if (v.channels_last) {
    const T* row = v.logits + (n * v.h + i) * v.w * v.C;  // [w, C]
    for (int64_t x = x0; x < x1; ++x) {
      const T* a = row + static_cast<int64_t>(i0[x]) * v.C;
      const T* b = row + static_cast<int64_t>(i1[x]) * v.C;
      const float la = l0[x], lb = l1[x];
      float* dst = blend + (x - x0);
      for (int64_t c = 0; c < v.C; ++c) dst[c * stride] = la * to_float(a[c]) + lb * to_float(b[c]);
    }
    return;
  }
  for (int64_t c = 0; c < v.C; ++c) {
    const T* row = v.logits + ((n * v.C + c) * v.h + i) * v.w;  // [w]
    float* dst = blend + c * stride - x0;
    for (int64_t x = x0; x < x1; ++x) dst[x] = l0[x] * to_float(row[i0[x]]) + l1[x] * to_float(row[i1[x]]);
  }
}

// One output row's stripe of `count` <= kBlock pixels from the two column-blended source rows a and b ([C, stride]
// each): the first maximum over classes of la * a + lb * b (NaN counts as the largest), and for prob the winner's
// softmax probability 1 / sum_c exp(l_c - l_max) (a class tied with the maximum adds exactly 1).
template <typename L>
HRNET_FAST_TARGET void argmax_block(const float* a, const float* b, float la, float lb, int64_t classes,
                                    int64_t stride, int64_t count, L* labels, float* prob) {
  float best[kBlock];
  int32_t arg[kBlock];
  for (int64_t x = 0; x < count; ++x) {
    best[x] = la * a[x] + lb * b[x];
    arg[x] = 0;
  }
  for (int64_t c = 1; c < classes; ++c) {
    const float *ac = a + c * stride, *bc = b + c * stride;
    const int32_t label = static_cast<int32_t>(c);
    for (int64_t x = 0; x < count; ++x) {
      const float v = la * ac[x] + lb * bc[x];
      const bool take = v > best[x] || (v != v && best[x] == best[x]);
      best[x] = take ? v : best[x];
      arg[x] = take ? label : arg[x];
    }
  }
  for (int64_t x = 0; x < count; ++x) labels[x] = static_cast<L>(arg[x]);
  if (prob == nullptr) return;
  float sum[kBlock];
  for (int64_t x = 0; x < count; ++x) sum[x] = 0.f;
  for (int64_t c = 0; c < classes; ++c) {
    const float *ac = a + c * stride, *bc = b + c * stride;
    for (int64_t x = 0; x < count; ++x) {
      const float v = la * ac[x] + lb * bc[x];
      sum[x] += v == best[x] ? 1.f : std::exp(v - best[x]);
    }
  }
  for (int64_t x = 0; x < count; ++x) prob[x] = 1.f / sum[x];
}

// Output rows [begin, end) of the flattened (n, y) range. `blend` holds 2 * C * stripe floats.
template <typename T, typename L>
HRNET_FAST_TARGET void resize_argmax_rows(const View<T>& v, L* labels, float* prob, int64_t begin, int64_t end,
                                          int64_t stripe, float* blend) {
  float* slot[2] = {blend, blend + v.C * stripe};
  for (int64_t x0 = 0; x0 < v.out_w; x0 += stripe) {
    const int64_t x1 = std::min(v.out_w, x0 + stripe);
    int64_t held[2] = {-1, -1};  // n * h + i of the source row each slot holds, for this stripe
    // The column blend of source row i of image n, computed into the slot not holding `keep` unless held.
    auto source_row = [&](int64_t n, int64_t i, int64_t keep) -> const float* {
      const int64_t key = n * v.h + i;
      for (int s = 0; s < 2; ++s) {
        if (held[s] == key) return slot[s];
      }
      const int s = held[0] == keep ? 1 : 0;
      blend_columns(v, n, i, x0, x1, stripe, slot[s]);
      held[s] = key;
      return slot[s];
    };
    for (int64_t r = begin; r < end; ++r) {
      const int64_t n = r / v.out_h, y = r - n * v.out_h;
      const int64_t i0 = v.rows->i0[y], i1 = v.rows->i1[y];
      const float* a = source_row(n, i0, n * v.h + i1);
      const float* b = i1 == i0 ? a : source_row(n, i1, n * v.h + i0);
      for (int64_t x = x0; x < x1; x += kBlock) {
        argmax_block(a + (x - x0), b + (x - x0), v.rows->l0[y], v.rows->l1[y], v.C, stripe,
                     std::min(kBlock, x1 - x), labels + r * v.out_w + x,
                     prob == nullptr ? nullptr : prob + r * v.out_w + x);
      }
    }
  }
}
