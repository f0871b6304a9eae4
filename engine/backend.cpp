#include "engine/backend.hpp"

#include "emu/thread_backend.hpp"
#ifdef EPLAB_HAVE_SIM
#include "sim/sim_backend.hpp"
#endif
#ifdef EPLAB_HAVE_REAL
#include "kernels/gpu_backend.hpp"
#endif
#ifdef EPLAB_HAVE_MPI
#include "mpi/mpi_backend.hpp"
#endif

namespace eplab {

// The build defines EPLAB_HAVE_<backend> for each backend library it links into this one (CMakeLists.txt); a
// backend it left out stays listed, with how to enable it.
EPLAB_REGISTRY(BackendFactory, backend_registry, "backend", r) {
  r.add("emu", "ranks as threads in one process, real bytes through shared memory, wall clock", &make_thread_backend);
#ifdef EPLAB_HAVE_SIM
  r.add("sim", "ranks as SimGrid actors on a simulated cluster, phantom or real payloads, simulated time",
        &make_sim_backend);
#else
  r.add_missing("sim",
                "this build has no SimGrid: install libsimgrid-dev (scripts/setup.sh does) and reconfigure with "
                "-DEPLAB_WITH_SIMGRID=ON");
#endif
#ifdef EPLAB_HAVE_REAL
  r.add("real", "ranks as threads, every message staged through GPU memory (docs/gpu.md)", &make_gpu_backend);
#else
  r.add_missing("real",
                "this build has no CUDA: install the CUDA toolkit and reconfigure with -DEPLAB_WITH_CUDA=ON; "
                "meanwhile use --backend=emu (real bytes) or --backend=sim (simulated time)");
#endif
#ifdef EPLAB_HAVE_MPI
  r.add("mpi", "ranks as MPI processes (mpirun -n N), real bytes, wall clock, one machine or several",
        &make_mpi_backend);
#else
  r.add_missing("mpi",
                "this build has no MPI: install libopenmpi-dev (scripts/setup.sh does) and reconfigure with "
                "-DEPLAB_WITH_MPI=ON");
#endif
}

std::unique_ptr<Backend> create_backend(const std::string& name) { return backend_registry().by_name(name)(); }

std::unique_ptr<Backend> create_backend(const std::string& name, const std::string& transport) {
  auto b = create_backend(name);
  b->use_transport(transport);
  return b;
}

std::vector<std::string> backend_names() { return backend_registry().names(); }

}  // namespace eplab
