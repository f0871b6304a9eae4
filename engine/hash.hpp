// SplitMix64's output function (Steele, Lea, Flood 2014): a cheap, well-mixed 64-bit hash. Layout-cache keys,
// routing streams and the expert transforms all derive their bits from it, so a seed means the same everywhere.
#pragma once

#include <cstdint>

namespace eplab {

inline uint64_t mix64(uint64_t z) {
  z += 0x9e3779b97f4a7c15ull;
  z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
  z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
  return z ^ (z >> 31);
}

}  // namespace eplab
