// `--backend=mpi --transport verbs`: the mpi backend's processes, matching, failure notices and barriers, with
// every all-to-all-v's payload written over ibverbs reliable-connected queue pairs (one per peer) as
// verbs/stream_set.* drives it; self messages are copied in place and every other message stays on MPI. Built
// and its logic tested on CPU through an in-memory device; it has not yet run on an RDMA NIC (docs/verbs.md).
#pragma once

#include <memory>
#include <string>

#include "mpi/mpi_backend.hpp"

namespace eplab::verbs {

// Whether this build has the libibverbs half (EPLAB_WITH_VERBS).
bool verbs_built();

enum class MpiTransport { kMpi, kVerbs };
// `--transport` of --backend=mpi: "" or mpi (MPI, single copy on one machine), or verbs; verbs where `verbs_built`
// is false and any other name are refused, saying what was built and which names there are.
MpiTransport parse_mpi_transport(const std::string& name, bool verbs_built);

// Every process's set-up (MpiLaunchHooks::setup): opens the RDMA device (EPLAB_VERBS_DEVICE, else the first;
// port EPLAB_VERBS_PORT, else 1), registers the rings and staging, creates a queue pair per peer, exchanges
// endpoints and connects. Collective: when any process cannot, every process throws, the one that could not
// with why (no RDMA device found: what to check), the others naming it.
std::unique_ptr<MpiAddOn> start_verbs(MpiProcessGroup& g);

}  // namespace eplab::verbs
