#include "engine/layout_cache.hpp"

#include "engine/hash.hpp"

namespace eplab {

uint64_t LayoutCache::routing_hash(int num_tokens, int topk, const int32_t* slots) {
  uint64_t h = mix64((static_cast<uint64_t>(static_cast<uint32_t>(num_tokens)) << 16) ^ static_cast<uint64_t>(topk));
  const size_t n = static_cast<size_t>(num_tokens) * topk;
  for (size_t i = 0; i < n; ++i) h = mix64(h ^ static_cast<uint32_t>(slots[i]));
  return h;
}

const LayoutCache::Entry* LayoutCache::find(uint64_t key) {
  for (auto it = lru_.begin(); it != lru_.end(); ++it)
    if (it->key == key) {
      lru_.splice(lru_.begin(), lru_, it);
      return &lru_.front();
    }
  return nullptr;
}

void LayoutCache::insert(Entry e) {
  if (capacity_ <= 0) return;
  for (auto it = lru_.begin(); it != lru_.end(); ++it)
    if (it->key == e.key) {
      lru_.erase(it);
      break;
    }
  lru_.push_front(std::move(e));
  while (static_cast<int>(lru_.size()) > capacity_) lru_.pop_back();
}

std::vector<uint64_t> LayoutCache::keys() const {
  std::vector<uint64_t> k;
  for (const Entry& e : lru_) k.push_back(e.key);
  return k;
}

}  // namespace eplab
