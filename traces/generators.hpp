// Synthetic routing generators behind make_routing(): uniform, deepep, zipf, hotset and correlated.
// Each batch is a pure function of (seed, step, layer, rank), drawn from a counter-seeded SplitMix64
// stream, so any rank can ask for any batch in any order and get the same tokens.
#pragma once

#include <cstdint>
#include <memory>
#include <string>

#include "engine/hash.hpp"
#include "traces/routing_source.hpp"

namespace eplab {

// SplitMix64 (Steele, Lea, Flood 2014): tiny state, so seeding one per batch or per token is free, and the
// whole stream is specified here (no std:: distributions), so a seed gives the same routing on every platform.
class SplitMix64 {
 public:
  explicit SplitMix64(uint64_t seed) : state_(seed) {}
  uint64_t next() {
    const uint64_t z = mix64(state_);  // the output function of the advanced state
    state_ += 0x9e3779b97f4a7c15ull;
    return z;
  }
  double uniform() { return static_cast<double>(next() >> 11) * 0x1.0p-53; }  // [0, 1)
  // In [0, n); the multiply-shift bias is below 2^-40 for the n we use.
  uint32_t below(uint32_t n) { return static_cast<uint32_t>(((next() >> 32) * static_cast<uint64_t>(n)) >> 32); }
  double normal();       // standard normal (Box-Muller, both values used)
  double exponential();  // Exp(1), by a 256-layer ziggurat: one draw and no log 99% of the time

 private:
  uint64_t state_;
  double spare_ = 0;
  bool has_spare_ = false;
};

// Mixes a seed with a stream label and coordinates into an independent stream seed.
uint64_t stream_seed(uint64_t seed, uint64_t label, int64_t a, int64_t b = 0, int64_t c = 0, int64_t d = 0);

// The quantile of |N(0,1)| at u in [0, 1), and the same at u = exp(log_u) (exact where u is too close to 1 for
// a double): deepep turns uniform ranks into gate scores 1 + these. Acklam's approximation, relative error
// below 1.2e-9.
double half_normal_quantile(double u);
double half_normal_quantile_log(double log_u);

// Builds a generator for a spec without the "trace:" prefix; nullptr if the name is not a generator's.
std::unique_ptr<RoutingSource> make_generator(const std::string& spec, const RoutingParams& params);

}  // namespace eplab
