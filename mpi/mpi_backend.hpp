// The `mpi` backend: each rank is an MPI process (`mpirun -n N eplab run --backend=mpi ...`), on one machine or
// several with a hostfile; real bytes, wall clock, verified like emu. It is also the bootstrap that the
// multi-process GPU transports use.
#pragma once

#include <memory>

#include "engine/backend.hpp"

namespace eplab {

std::unique_ptr<Backend> make_mpi_backend();

}  // namespace eplab
