// CPU multires_fuse: out = relu?(x + sum_j up(low_res[j]) + sum_k same_res[k]) in one pass.
//
// Eager PyTorch materialises every upsampled tensor and every partial sum (two full-size passes per term); this
// reads each input once and writes the output once, reading low-res inputs in place: nearest, output (h, w) takes
// low_res[j][h >> s_j, w >> s_j]; bilinear, it blends the four low-res pixels of its row and column taps
// (csrc/bilinear.h, precomputed per output row and column). The output's flat range is split over OpenMP threads
// (at::parallel_for) and summed in fp32 in the reference's order (x, low_res..., same_res...), so fp32 nearest
// results equal the eager composition bit for bit (bilinear ones to rounding: the taps are blended in another
// order) and fp16/bf16 round once instead of after every add. The loops (cpu/fuse_kernel.h) are compiled for the
// baseline ISA and for AVX2 + F16C, chosen once at run time.
#include "bilinear.h"
#include "dispatch.h"
#include "ops.h"

#include <ATen/Parallel.h>
#include <c10/util/BFloat16.h>
#include <c10/util/Half.h>

#include <algorithm>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <map>
#include <type_traits>
#include <vector>

#include "cpu/avx2_loops.h"

// GCC's unroll-and-jam pairs up iterations of the loops over terms and leaves what it produced less vectorised:
// NHWC fusion into an 18-channel map runs ~1.4x slower with it.
#if defined(__GNUC__) && !defined(__clang__)
#define HRNET_FAST_NO_JAM __attribute__((optimize("no-loop-unroll-and-jam")))
#else
#define HRNET_FAST_NO_JAM
#endif

namespace hrnet_fast {
namespace {

// Output positions per piece: bounds the fp32 copies of 16-bit low-res windows (L1-sized) while amortising the
// per-piece set-up.
constexpr int64_t kChunk = 1024;
// Output elements per parallel task: below about this, waking a second thread costs more than it saves.
constexpr int64_t kGrainElements = 16384;

// Bilinear taps of one dimension of one low_res term, per output index: low-res indices i0, i1 and their weights.
struct TapView {
  const int32_t *i0, *i1;
  const float *l0, *l1;
};

// Raw view of one call. Strides are implied: every tensor is dense in the output's layout (see FuseArgs).
template <typename T>
struct FuseView {
  const T* x;                           // [N, C, H, W] or [N, H, W, C]
  const T* low[kMaxTerms];              // [N, C, H >> s, W >> s] or [N, H >> s, W >> s, C]
  int low_shift[kMaxTerms];             // nearest: s, log2 of the upsampling factor
  int64_t low_h[kMaxTerms], low_w[kMaxTerms];
  const int32_t* low_index[kMaxTerms];  // nearest NCHW: plane position -> low-res plane position (make_tables)
  TapView row_taps[kMaxTerms];          // bilinear: per output row (H entries)
  TapView col_taps[kMaxTerms];          // bilinear: per output column (W entries)
  int64_t zbuf_size;                    // NCHW: floats of low-res rows one piece can touch (>= W + 8)
  const T* same[kMaxTerms];             // like x
  T* out;                               // like x
  int n_low, n_same;
  int64_t C, H, W;
  bool channels_last, relu, bilinear;
};

// One dimension's bilinear taps for every output index (csrc/bilinear.h).
struct TapTable {
  std::vector<int32_t> i0, i1;
  std::vector<float> l0, l1;

  TapTable(int64_t in, int64_t out, bool align_corners) : i0(out), i1(out), l0(out), l1(out) {
    const float scale = linear_scale(in, out, align_corners);
    for (int64_t d = 0; d < out; ++d) {
      const LinearTap tap = linear_tap(scale, d, in, out, align_corners);
      i0[d] = static_cast<int32_t>(tap.i0);
      i1[d] = static_cast<int32_t>(tap.i1);
      l0[d] = tap.l0;
      l1[d] = tap.l1;
    }
  }
  TapView view() const { return {i0.data(), i1.data(), l0.data(), l1.data()}; }
};

// Index tables of one call: nearest NCHW gather tables, one per distinct upsampling shift s,
// table[h * W + w] = (h >> s) * (W >> s) + (w >> s); bilinear taps per term, rows and columns.
struct Tables {
  std::map<int, std::vector<int32_t>> nearest;
  std::vector<TapTable> rows, cols;
};

Tables make_tables(const FuseArgs& a) {
  Tables tables;
  const int64_t H = a.x.size(2), W = a.x.size(3);
  if (a.mode == Upsample::kBilinear) {
    for (const at::Tensor& z : a.low_res) {
      tables.rows.emplace_back(z.size(2), H, a.align_corners);
      tables.cols.emplace_back(z.size(3), W, a.align_corners);
    }
    return tables;
  }
  if (a.channels_last) return tables;
  TORCH_CHECK(H * W <= INT32_MAX, "multires_fuse_cpu: an NCHW plane of ", H, "x", W,
              " is too large for 32-bit gather indices");
  for (int s : a.low_shift) {
    std::vector<int32_t>& table = tables.nearest[s];
    if (!table.empty()) continue;
    table.resize(H * W);
    for (int64_t h = 0; h < H; ++h) {
      for (int64_t w = 0; w < W; ++w) table[h * W + w] = static_cast<int32_t>((h >> s) * (W >> s) + (w >> s));
    }
  }
  return tables;
}

template <typename T>
FuseView<T> make_view(const FuseArgs& a, const Tables& tables) {
  FuseView<T> v{};
  v.x = a.x.const_data_ptr<T>();
  v.out = a.out.mutable_data_ptr<T>();
  v.n_low = static_cast<int>(a.low_res.size());
  v.n_same = static_cast<int>(a.same_res.size());
  v.bilinear = a.mode == Upsample::kBilinear;
  for (int j = 0; j < v.n_low; ++j) {
    v.low[j] = a.low_res[j].const_data_ptr<T>();
    v.low_h[j] = a.low_res[j].size(2);
    v.low_w[j] = a.low_res[j].size(3);
    if (v.bilinear) {
      v.row_taps[j] = tables.rows[j].view();
      v.col_taps[j] = tables.cols[j].view();
    } else {
      v.low_shift[j] = a.low_shift[j];
      v.low_index[j] = a.channels_last ? nullptr : tables.nearest.at(a.low_shift[j]).data();
    }
  }
  for (int k = 0; k < v.n_same; ++k) v.same[k] = a.same_res[k].const_data_ptr<T>();
  v.C = a.x.size(1);
  v.H = a.x.size(2);
  v.W = a.x.size(3);
  v.channels_last = a.channels_last;
  v.relu = a.relu;
  // A piece of kChunk positions spans at most kChunk / W + 2 rows, so at most that many / f + 2 low-res rows of
  // W / f values: kChunk + 4 W bounds it for every f. It also holds a bilinear row blend (at most W values, read
  // up to 8 past the end).
  v.zbuf_size = kChunk + 4 * v.W;
  return v;
}

namespace baseline {
#define HRNET_FAST_TARGET HRNET_FAST_NO_JAM
#define HRNET_FAST_AVX2 0
#include "cpu/fuse_kernel.h"
#undef HRNET_FAST_AVX2
#undef HRNET_FAST_TARGET
}  // namespace baseline

#if HRNET_FAST_HAS_AVX2_PATH
namespace avx2 {
#define HRNET_FAST_TARGET __attribute__((target("avx2,fma,f16c"))) HRNET_FAST_NO_JAM
#define HRNET_FAST_AVX2 1
#include "cpu/fuse_kernel.h"
#undef HRNET_FAST_AVX2
#undef HRNET_FAST_TARGET
}  // namespace avx2
#endif

template <typename T>
void fuse(const FuseView<T>& v, int64_t numel) {
  void (*range)(const FuseView<T>&, int64_t, int64_t) = baseline::fuse_range<T>;
#if HRNET_FAST_HAS_AVX2_PATH
  if (use_avx2_loops()) range = avx2::fuse_range<T>;
#endif
  at::parallel_for(0, numel, kGrainElements, [&](int64_t begin, int64_t end) { range(v, begin, end); });
}

}  // namespace

void multires_fuse_cpu(const FuseArgs& args) {
  // The CPU conv epilogue leaves the bias to oneDNN's accumulator (cpu/conv_bn_act.cpp).
  TORCH_INTERNAL_ASSERT(!args.bias.defined(), "multires_fuse_cpu takes no bias");
  const Tables tables = make_tables(args);
  HRNET_FAST_DISPATCH_FLOAT_TYPES(args.x.scalar_type(), "multires_fuse_cpu", [&] {
    fuse(make_view<scalar_t>(args, tables), args.out.numel());
  });
}

}  // namespace hrnet_fast
