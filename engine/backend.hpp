// A backend launches one rank per GPU of a topology, each with its own Fabric, and runs a function on each.
// Backends register by name; an unknown or not-built-in name gets an error that says how to enable it.
#pragma once

#include <functional>
#include <memory>
#include <string>
#include <vector>

#include "engine/error.hpp"
#include "engine/fabric.hpp"
#include "engine/registry.hpp"

namespace eplab {

struct LaunchOptions {
  bool phantom_payload = false;  // sim: sizes only
  double timeout_s = 60;         // wall-clock limit for a blocked wait (emu) before it is reported
  std::string sim_model;         // sim: network model name (empty = default)
};

class Backend {
 public:
  virtual ~Backend() = default;
  virtual std::string name() const = 0;
  virtual std::string description() const = 0;
  virtual Caps caps() const = 0;
  // The number of ranks this launcher can run, where the process launcher fixed it (mpirun -n N); -1: any.
  virtual int fixed_world_size() const { return -1; }
  // Picks one of the backend's transports by name (`--transport`: the `real` backend's staged | nccl | cuda-ipc,
  // the `mpi` backend's mpi | verbs); called once, before anything else. "" is the backend's default; a backend
  // with one transport refuses any other.
  virtual void use_transport(const std::string& transport) {
    if (!transport.empty())
      throw EplabError("--transport '" + transport + "': backend '" + name() +
                       "' has one transport; --transport chooses among the `real` backend's (staged | nccl | "
                       "cuda-ipc) and the `mpi` backend's (mpi | verbs)");
  }
  // Why this backend cannot run on this machine (no GPU found), or empty.
  virtual std::string unavailable() const { return {}; }
  // Whether launch() runs every rank in this process (threads, simulated actors). A multi-process backend
  // returns false and runs only this process's rank; the driver then keeps no cache meant for all ranks.
  virtual bool in_process() const { return true; }
  // Runs rank_main(fabric) once per rank of this process (every rank where in_process(); its own one for a
  // process of a multi-process launch) and returns when they are done. The first exception thrown by any
  // rank is rethrown here after the others are released (run_rank and rethrow_first_rank_error in fabric.hpp).
  virtual void launch(const Topology& topo, const LaunchOptions& opts,
                      const std::function<void(Fabric&)>& rank_main) = 0;
};

// The backend registry (engine/registry.hpp): every backend this build has, and those it left out with how to
// enable them, so create_backend() of one of those explains instead of calling it unknown.
using BackendFactory = std::unique_ptr<Backend> (*)();
Registry<BackendFactory>& backend_registry();
std::unique_ptr<Backend> create_backend(const std::string& name);
// The same with one of its transports (Backend::use_transport); "" is its default.
std::unique_ptr<Backend> create_backend(const std::string& name, const std::string& transport);
std::vector<std::string> backend_names();  // the ones this build has

}  // namespace eplab
