// Message framing for dispatch: a block of tokens, each with its origin (source rank, token index) and the
// expert selections (physical slot, weight) it carries, followed by the codec-encoded activation rows.
// With phantom payloads (sim) a block travels as a count summary charged at this framing's size instead
// (EngineContext::BlockSummary); block_meta_bytes gives that size's metadata part.
#pragma once

#include <cstddef>
#include <cstdint>
#include <vector>

namespace eplab {

struct TokenBlock {
  std::vector<int32_t> src_rank;
  std::vector<int32_t> token;
  std::vector<int32_t> sel_begin{0};  // [tokens + 1] offsets into sel_slot / sel_weight
  std::vector<int32_t> sel_slot;
  std::vector<float> sel_weight;

  int size() const { return static_cast<int>(token.size()); }
  int num_sels() const { return static_cast<int>(sel_slot.size()); }
  void clear();
  void add_token(int32_t src, int32_t tok) {
    src_rank.push_back(src);
    token.push_back(tok);
    sel_begin.push_back(sel_begin.back());
  }
  void add_sel(int32_t slot, float weight) {
    sel_slot.push_back(slot);
    sel_weight.push_back(weight);
    ++sel_begin.back();
  }
  void reserve(size_t tokens, size_t sels);
  // Appends every token of `o` (bulk copies, not token by token).
  void append(const TokenBlock& o);
  // Frees the storage, not just the contents: all ranks of one process (threads, actors) hold blocks at once.
  void release() { *this = TokenBlock{}; }
};

// Bytes the metadata of a block with this many tokens and selections occupies.
size_t block_meta_bytes(int tokens, int sels);

// Appends the block's metadata; `payload_bytes` is recorded so the receiver can find and check the rows that
// follow.
void pack_block(const TokenBlock& b, uint64_t payload_bytes, std::vector<uint8_t>& out);

// Parses a block from `data` (`size` real bytes). Returns the offset where the rows start and sets
// payload_bytes. Throws FabricError with `what` (peer, phase) on a malformed message.
size_t unpack_block(const uint8_t* data, size_t size, TokenBlock& b, uint64_t& payload_bytes, const char* what);

}  // namespace eplab
