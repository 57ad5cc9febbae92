// Dispatch over the three dtypes the ops support (checked in ops.cpp), without instantiating kernels for double.
#pragma once

#include <ATen/Dispatch.h>

#define HRNET_FAST_DISPATCH_FLOAT_TYPES(TYPE, NAME, ...)       \
  AT_DISPATCH_SWITCH(TYPE, NAME,                               \
                     AT_DISPATCH_CASE(at::kFloat, __VA_ARGS__) \
                     AT_DISPATCH_CASE(at::kHalf, __VA_ARGS__)  \
                     AT_DISPATCH_CASE(at::kBFloat16, __VA_ARGS__))
