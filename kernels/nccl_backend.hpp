// The `real` backend over NCCL (`mpirun -n N eplab run --backend=real --transport nccl ...`): ranks as MPI
// processes, one per GPU; all-to-all-v as grouped ncclSend/ncclRecv through reused device staging buffers, every
// other message over the mpi transport. docs/gpu.md says what has and has not run on a GPU. No CUDA headers.
#pragma once

#include <memory>
#include <string>

#include "engine/backend.hpp"

namespace eplab {

std::unique_ptr<Backend> make_nccl_backend();

// Loads NCCL (EPLAB_NCCL_LIBRARY, else libnccl.so.2 where the dynamic loader finds it, else the CUDA toolkit's
// lib64) and returns "" or why it cannot: the binary runs on machines without NCCL until a run asks for it.
std::string nccl_load_error();

}  // namespace eplab
