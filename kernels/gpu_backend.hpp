// The `real` backend: ranks as threads, every message staged through GPU memory (host -> sender's device
// buffer -> receiver's device buffer -> host), rank r on device r % device count. docs/gpu.md says what is
// and is not on the GPU. Including this header needs no CUDA headers.
#pragma once

#include <memory>

#include "engine/backend.hpp"

namespace eplab {

std::unique_ptr<Backend> make_gpu_backend();

}  // namespace eplab
