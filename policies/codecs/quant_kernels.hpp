// Hot loops of the fixed-rate quantizers behind runtime CPU dispatch: each is compiled twice (AVX2 and the
// x86-64 baseline) with GCC's target_clones and the loader picks one, so the build needs no -march flag.
#pragma once

#include <cstddef>
#include <cstdint>
#include <vector>

#include "policies/codecs/block_quant.hpp"

// Not under ThreadSanitizer: the loader runs a clone's resolver while relocating, before the TSan runtime is up,
// and the instrumented resolver crashes every test binary at start-up (scripts/sanitize.sh thread).
#if defined(__x86_64__) && defined(__GNUC__) && !defined(__clang__) && !defined(__SANITIZE_THREAD__)
#define EPLAB_CLONES __attribute__((target_clones("avx2", "default")))
#else
#define EPLAB_CLONES
#endif

// Hand-written AVX2 kernels (intrinsics in functions with the avx2 target attribute, chosen at run time like
// the clones) where GCC's clones stayed slow: bit packing, per-block setup, logfmt10's series, the fp8 decode's
// table lookup. Each has a portable twin that produces the same bytes; -DEPLAB_NO_AVX2_KERNELS builds the
// portable path only.
#if defined(__x86_64__) && defined(__GNUC__) && !defined(EPLAB_NO_AVX2_KERNELS)
#define EPLAB_AVX2_KERNELS 1
#define EPLAB_TARGET_AVX2 __attribute__((target("avx2")))
// The fp8-*-b128 decoder also converts half floats (F16C); it runs only where the CPU has both.
#define EPLAB_TARGET_AVX2_F16C __attribute__((target("avx2,f16c")))
#endif

namespace eplab::codecs {

BlockAmax amax_kernel(const float* x, size_t n);
// Per-element conversions of block_quant.hpp; E4M3 maps NaN and Inf to the E4M3 NaN code.
void quantize_e4m3_kernel(const float* x, size_t n, float scale, uint8_t* codes);
void quantize_e5m2_kernel(const float* x, size_t n, float scale, uint8_t* codes);
void quantize_e2m3_kernel(const float* x, size_t n, float scale, uint8_t* codes);
void quantize_e2m1_kernel(const float* x, size_t n, float scale, uint8_t* codes);
void quantize_int8_kernel(const float* x, size_t n, float scale, int8_t* codes);

// One token of an fp8-*-b128 codec: row[i] = table[codes[i]] * (scale_inv of i's block), the table being
// e4m3_table() or e5m2_table() and the blocks `block` elements long (the last may be shorter). scales holds one
// fp32 scale_inv per block (4 bytes, any alignment) or, with ue8m0, one E8M0 byte per block. The AVX2 path
// computes each code's value from its bits (half-float conversion, no table) and gives the same bits for every
// code and scale; a NaN code decodes to the table's NaN whatever the scale.
enum class Fp8Elem { kE4M3, kE5M2 };
void fp8_decode_row_kernel(Fp8Elem elem, bool ue8m0, const uint8_t* codes, const uint8_t* scales, int hidden, int block,
                           float* row);

// One token of an MX format in one call (a call per 32-element block cost more than the block's work):
// payload holds the packed elements (element i at bits [i*w, (i+1)*w), little-endian), scales one E8M0 code
// per block. The element width w is 8, 6 or 4 for E4M3, E2M3 and E2M1.
enum class MxElem { kE4M3, kE2M3, kE2M1 };
// mult (hidden floats) and codes (hidden bytes) are scratch space.
void mx_encode_row_kernel(MxElem elem, const float* row, int hidden, uint8_t* payload, uint8_t* scales, float* mult,
                          uint8_t* codes);
void mx_decode_row_kernel(MxElem elem, const uint8_t* payload, const uint8_t* scales, int hidden, float* row);

// bfloat16 rows (the bf16 codec and the engine's bf16 wire paths), as float_to_bf16 / bf16_to_float element by
// element. `bf16` points at 2-byte codes in a byte buffer (any alignment). Each is one pass the compiler
// vectorizes, so a row moves at memory speed instead of an element at a time; the two that round to bf16
// (bf16_encode_kernel, bf16_sum_rows_encode_kernel) have AVX2 passes by hand, which GCC's rounding was too slow
// for.
void bf16_encode_kernel(const float* x, size_t n, uint8_t* bf16);
void bf16_decode_kernel(const uint8_t* bf16, size_t n, float* x);
// acc[i] += decode(bf16[i]): a combine's or forwarder's sum of one received row, in the order the caller adds rows.
void bf16_decode_add_kernel(const uint8_t* bf16, size_t n, float* acc);
// acc[i] = 0 + decode(bf16[i]): the first row of such a sum, the bits adding it to zeroed memory gives (-0 becomes
// +0), without zeroing the memory first.
void bf16_decode_first_kernel(const uint8_t* bf16, size_t n, float* acc);
// The sum of `count` rows: acc[i] = ((start + decode(rows[0][i])) + decode(rows[1][i])) + ..., where start is 0
// when `first` (as bf16_decode_first_kernel) and acc[i] otherwise: the bits of adding the rows one at a time in
// that order (bf16_decode_first/add_kernel), in one pass over acc for every four rows, which keeps the rows' reads
// in flight together (about twice the speed of row at a time on rows that lie apart).
void bf16_sum_rows_kernel(const uint8_t* const* rows, size_t count, size_t n, float* acc, bool first);
// The same sum from 0, rounded to bf16 into `bf16` (any alignment): the bits of bf16_sum_rows_kernel(first) and then
// bf16_encode_kernel, with the last four rows' pass writing the output directly. `acc` (n floats) is scratch, used
// where there are more than four rows; no rows give zeros.
void bf16_sum_rows_encode_kernel(const uint8_t* const* rows, size_t count, size_t n, float* acc, uint8_t* bf16);
// acc[i] += w * (decode(bf16[i]) * s), the elementwise experts' accumulate (identity passes s = 1, which is exact:
// x * 1 == x for every float, and the product is then rounded as ExpertTransform::accumulate rounds it).
void bf16_axpy_kernel(const uint8_t* bf16, size_t n, float w, float s, float* acc);

// The zstd stage's planes of `count` float elements (fp32: width 4, bf16: width 2): exps[i] is element i's
// exponent byte, and mant[j][i] byte j (top first) of its sign and mantissa bits with the sign on top (fp32's 24
// bits in three planes, bf16's 8 in one). join_float_planes puts the element bytes back together.
void split_float_planes(const uint8_t* in, size_t count, int width, uint8_t* exps, uint8_t* const* mant);
void join_float_planes(const uint8_t* exps, const uint8_t* const* mant, size_t count, int width, uint8_t* out);

// split_float_planes with the exponents as nibble pairs: element i's nibble is e - lo (mod 256) where that is
// below 15, else 15 with e appended to `escapes` (in element order); element 2i's nibble is the low half of
// pairs[i], 2i + 1's the high half (0 past an odd count). join_float_planes_paired reverses it and returns how many
// of the n_escapes bytes it used, or SIZE_MAX if a 15 had none left or an odd count's spare nibble is not 0.
void split_float_planes_paired(const uint8_t* in, size_t count, int width, uint8_t lo, uint8_t* pairs,
                               std::vector<uint8_t>& escapes, uint8_t* const* mant);
size_t join_float_planes_paired(const uint8_t* pairs, uint8_t lo, const uint8_t* escapes, size_t n_escapes,
                                const uint8_t* const* mant, size_t count, int width, uint8_t* out);

// Whether the hand-written AVX2 kernels run: the CPU has AVX2 and no test has forced the portable path.
bool avx2_kernels_enabled();
// The same for the kernels that also need F16C (the fp8 decoder).
bool avx2_f16c_kernels_enabled();
// Tests compare the two paths byte for byte; not thread-safe, call before encoding.
void force_portable_kernels(bool on);

// Little-endian bit packing of narrow codes (one per byte in `codes`), shared by the MX and logfmt codecs:
// w-bit code i occupies bits [i*w, (i+1)*w) of out.
void pack_bits(const uint8_t* codes, int n, int bits, uint8_t* out);
void unpack_bits(const uint8_t* in, int n, int bits, uint8_t* codes);

}  // namespace eplab::codecs
