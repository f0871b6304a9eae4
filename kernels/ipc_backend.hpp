// The `real` backend over CUDA IPC (`mpirun -n N eplab run --backend=real --transport cuda-ipc ...`): ranks as
// MPI processes on one machine, any number per GPU, each all-to-all-v's payload written by the sender straight
// into the receiver's device buffer (cudaIpc handles), every other message over the mpi transport. docs/gpu.md
// says what has and has not run on a GPU. No CUDA headers.
#pragma once

#include <memory>

#include "engine/backend.hpp"

namespace eplab {

std::unique_ptr<Backend> make_ipc_backend();

}  // namespace eplab
