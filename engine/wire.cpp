#include "engine/wire.hpp"

#include <cstring>
#include <string>

#include "engine/error.hpp"

namespace eplab {
namespace {

constexpr uint32_t kBlockMagic = 0x4B4C4245;  // "EBLK"

struct BlockHeader {
  uint32_t magic;
  uint32_t tokens;
  uint32_t sels;
  uint32_t reserved;
  uint64_t payload_bytes;
};

template <class T>
void append(std::vector<uint8_t>& out, const std::vector<T>& v, size_t n) {
  const size_t at = out.size();
  out.resize(at + n * sizeof(T));
  if (n) std::memcpy(out.data() + at, v.data(), n * sizeof(T));
}

template <class T>
void take(const uint8_t* data, size_t& off, std::vector<T>& v, size_t n) {
  v.resize(n);
  if (n) std::memcpy(v.data(), data + off, n * sizeof(T));
  off += n * sizeof(T);
}

}  // namespace

void TokenBlock::clear() {
  src_rank.clear();
  token.clear();
  sel_begin.assign(1, 0);
  sel_slot.clear();
  sel_weight.clear();
}

void TokenBlock::reserve(size_t tokens, size_t sels) {
  src_rank.reserve(tokens);
  token.reserve(tokens);
  sel_begin.reserve(tokens + 1);
  sel_slot.reserve(sels);
  sel_weight.reserve(sels);
}

void TokenBlock::append(const TokenBlock& o) {
  const int32_t base = sel_begin.back();
  src_rank.insert(src_rank.end(), o.src_rank.begin(), o.src_rank.end());
  token.insert(token.end(), o.token.begin(), o.token.end());
  for (size_t i = 1; i < o.sel_begin.size(); ++i) sel_begin.push_back(base + o.sel_begin[i]);
  sel_slot.insert(sel_slot.end(), o.sel_slot.begin(), o.sel_slot.end());
  sel_weight.insert(sel_weight.end(), o.sel_weight.begin(), o.sel_weight.end());
}

size_t block_meta_bytes(int tokens, int sels) {
  return sizeof(BlockHeader) + static_cast<size_t>(tokens) * (3 * sizeof(int32_t)) + sizeof(int32_t) +
         static_cast<size_t>(sels) * (sizeof(int32_t) + sizeof(float));
}

void pack_block(const TokenBlock& b, uint64_t payload_bytes, std::vector<uint8_t>& out) {
  BlockHeader h{kBlockMagic, static_cast<uint32_t>(b.size()), static_cast<uint32_t>(b.num_sels()), 0, payload_bytes};
  const size_t at = out.size();
  out.reserve(at + block_meta_bytes(b.size(), b.num_sels()));
  out.resize(at + sizeof h);
  std::memcpy(out.data() + at, &h, sizeof h);
  append(out, b.src_rank, b.size());
  append(out, b.token, b.size());
  append(out, b.sel_begin, b.size() + 1);
  append(out, b.sel_slot, b.num_sels());
  append(out, b.sel_weight, b.num_sels());
}

size_t unpack_block(const uint8_t* data, size_t size, TokenBlock& b, uint64_t& payload_bytes, const char* what) {
  BlockHeader h;
  if (size < sizeof h)
    throw FabricError(std::string(what) + ": message of " + std::to_string(size) +
                      " bytes is shorter than a block header");
  std::memcpy(&h, data, sizeof h);
  if (h.magic != kBlockMagic) throw FabricError(std::string(what) + ": message does not start with a token block");
  const size_t meta = block_meta_bytes(static_cast<int>(h.tokens), static_cast<int>(h.sels));
  if (meta > size)
    throw FabricError(std::string(what) + ": block of " + std::to_string(h.tokens) + " tokens needs " +
                      std::to_string(meta) + " metadata bytes, message has " + std::to_string(size));
  size_t off = sizeof h;
  take(data, off, b.src_rank, h.tokens);
  take(data, off, b.token, h.tokens);
  take(data, off, b.sel_begin, h.tokens + 1);
  take(data, off, b.sel_slot, h.sels);
  take(data, off, b.sel_weight, h.sels);
  if (b.sel_begin.front() != 0 || b.sel_begin.back() != static_cast<int32_t>(h.sels))
    throw FabricError(std::string(what) + ": block selection offsets are inconsistent");
  payload_bytes = h.payload_bytes;
  return off;
}

}  // namespace eplab
