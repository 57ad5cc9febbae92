#pragma once
// The CPU kernels whose loops are compiled twice (baseline ISA, and AVX2 + FMA + F16C under a target attribute)
// pick one at run time here: AVX2 where the CPU has it, unless turned off with ATen's own switch
// (ATEN_CPU_CAPABILITY=default), which also lets tests run the baseline loops on any machine.
#include <cstdlib>
#include <cstring>

#if defined(__x86_64__) && (defined(__GNUC__) || defined(__clang__))
#define HRNET_FAST_HAS_AVX2_PATH 1
#include <immintrin.h>

namespace hrnet_fast {
inline bool use_avx2_loops() {
  static const bool use = [] {
    const char* capability = std::getenv("ATEN_CPU_CAPABILITY");
    if (capability != nullptr && std::strcmp(capability, "default") == 0) return false;
    return __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma") && __builtin_cpu_supports("f16c");
  }();
  return use;
}
}  // namespace hrnet_fast
#else
#define HRNET_FAST_HAS_AVX2_PATH 0
#endif
