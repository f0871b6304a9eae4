// Hot loops of the fixed-rate quantizers behind runtime CPU dispatch: each is compiled twice (AVX2 and the
// x86-64 baseline) with GCC's target_clones and the loader picks one, so the build needs no -march flag.
#pragma once

#include <cstddef>
#include <cstdint>

#include "policies/codecs/block_quant.hpp"

namespace eplab::codecs {

BlockAmax amax_kernel(const float* x, size_t n);
// Per-element conversions of block_quant.hpp; E4M3 maps NaN and Inf to the E4M3 NaN code.
void quantize_e4m3_kernel(const float* x, size_t n, float scale, uint8_t* codes);
void quantize_e5m2_kernel(const float* x, size_t n, float scale, uint8_t* codes);
void quantize_e2m3_kernel(const float* x, size_t n, float scale, uint8_t* codes);
void quantize_e2m1_kernel(const float* x, size_t n, float scale, uint8_t* codes);
void quantize_int8_kernel(const float* x, size_t n, float scale, int8_t* codes);
// out[i] = table[codes[i]] * scale
void dequantize_kernel(const uint8_t* codes, size_t n, const float* table, float scale, float* out);

}  // namespace eplab::codecs
