// Host wrappers of the CUDA kernels, DeepEP-style: raw device pointers and a stream, no framework types, so
// the engine, tests and benchmarks call them without CUDA headers. Every wrapper only enqueues work on
// `stream`; it throws std::runtime_error (naming the kernel) if the launch fails.
#pragma once

#include <cstddef>
#include <cstdint>

struct CUstream_st;

namespace eplab::kernels {

using GpuStream = CUstream_st*;  // cudaStream_t, spelled without the CUDA headers

// DeepEP's get_dispatch_layout on the GPU; the same results as engine/layout.cpp compute_layout.
// slots: [num_tokens x topk] physical slot ids, -1 = unused; a slot lives on rank slot / slots_per_rank and
// a rank on node rank / gpus_per_node. Outputs (device memory, overwritten): tokens_per_rank [num_ranks],
// tokens_per_node [num_ranks / gpus_per_node], tokens_per_slot [num_slots], is_token_in_rank
// [num_tokens x num_ranks] (0/1 bytes). Selections outside 0..num_slots-1 other than -1 are skipped and
// counted in *invalid_selections (the CPU version throws on them).
void dispatch_layout(const int32_t* slots, int num_tokens, int topk, int num_slots, int slots_per_rank,
                     int gpus_per_node, int32_t* tokens_per_rank, int32_t* tokens_per_node, int32_t* tokens_per_slot,
                     uint8_t* is_token_in_rank, int32_t* invalid_selections, GpuStream stream);

// fp8-e4m3-b128 on the GPU, byte for byte the CPU codec's wire format: per token, `hidden` E4M3 codes, then
// one fp32 scale_inv = amax / 448 per block of 128 channels (amax over finite elements, floored at 1e-4).
size_t fp8_e4m3_b128_token_bytes(int hidden);
void fp8_e4m3_b128_quantize(const float* x, int tokens, int hidden, uint8_t* wire, GpuStream stream);
void fp8_e4m3_b128_dequantize(const uint8_t* wire, int tokens, int hidden, float* out, GpuStream stream);

// out row i = in row index[i] (row_bytes bytes each); index -1 gives a zero row.
void permute_rows(const void* in, const int32_t* index, int out_rows, size_t row_bytes, void* out, GpuStream stream);

// out[t] = sum over k = 0..topk-1 of weight[t, k] * in[src[t, k]] in that order, each product and sum
// rounded to fp32 on its own (no FMA), starting from +0; src -1 is skipped.
void weighted_combine(const float* in, const int32_t* src, const float* weight, int tokens, int topk, int hidden,
                      float* out, GpuStream stream);

}  // namespace eplab::kernels
