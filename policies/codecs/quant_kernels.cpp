// Runtime-dispatched instantiations of the quantizer loops; see quant_kernels.hpp.
#include "policies/codecs/quant_kernels.hpp"

#if defined(__x86_64__) && defined(__GNUC__) && !defined(__clang__)
#define EPLAB_CLONES __attribute__((target_clones("avx2", "default")))
#else
#define EPLAB_CLONES
#endif

namespace eplab::codecs {

EPLAB_CLONES BlockAmax amax_kernel(const float* x, size_t n) { return block_amax(x, n); }

EPLAB_CLONES void quantize_e4m3_kernel(const float* x, size_t n, float scale, uint8_t* codes) {
  quantize_block<E4M3, 7>(x, n, scale, kE4M3Max, kE4M3NaN, kE4M3NaN, codes);
}
EPLAB_CLONES void quantize_e5m2_kernel(const float* x, size_t n, float scale, uint8_t* codes) {
  quantize_block<E5M2, 7>(x, n, scale, kE5M2Max, kE5M2NaN, kE5M2Inf, codes);
}
// MX blocks with NaN/Inf never reach the element loop (the whole block gets the NaN scale).
EPLAB_CLONES void quantize_e2m3_kernel(const float* x, size_t n, float scale, uint8_t* codes) {
  quantize_block<E2M3, 5>(x, n, scale, kE2M3Max, 0, 0, codes);
}
EPLAB_CLONES void quantize_e2m1_kernel(const float* x, size_t n, float scale, uint8_t* codes) {
  quantize_block<E2M1, 3>(x, n, scale, kE2M1Max, 0, 0, codes);
}
EPLAB_CLONES void quantize_int8_kernel(const float* x, size_t n, float scale, int8_t* codes) {
  quantize_int8(x, n, scale, codes);
}
EPLAB_CLONES void dequantize_kernel(const uint8_t* codes, size_t n, const float* table, float scale, float* out) {
  for (size_t i = 0; i < n; ++i) out[i] = table[codes[i]] * scale;
}

}  // namespace eplab::codecs
