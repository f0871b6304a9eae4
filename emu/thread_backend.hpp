// The emulated backend: N ranks as threads in one process, real bytes through shared memory, wall clock.
#pragma once

#include <memory>

#include "engine/backend.hpp"

namespace eplab {

std::unique_ptr<Backend> make_thread_backend();

}  // namespace eplab
