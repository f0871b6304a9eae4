// The simulated backend: every rank is a SimGrid actor on its own host of a platform built from the cluster
// spec; time is SimGrid's. Payloads may be phantom (sizes only) or real bytes, which are then copied so the
// engine's results can be verified as on emu.
#pragma once

#include <memory>

#include "engine/backend.hpp"

namespace eplab {

std::unique_ptr<Backend> make_sim_backend();

}  // namespace eplab
