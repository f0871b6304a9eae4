// Platform builder: turns a ClusterSpec into SimGrid hosts (one per GPU) and links (per-GPU scale-up and NIC
// links, per-direction; rail or leaf uplinks to a spine), inside one NetZone whose routes are computed from
// rank arithmetic, so memory grows with the rank count rather than with its square.
#pragma once

#include <string>
#include <vector>

#include "engine/link_recorder.hpp"
#include "engine/topology.hpp"

namespace simgrid::s4u {
class Host;
class Link;
}  // namespace simgrid::s4u

namespace eplab::sim {

struct Platform {
  std::vector<simgrid::s4u::Host*> hosts;  // index = rank
};

// Builds the platform into the running s4u::Engine, which must not have one yet.
Platform build_platform(const Topology& topo);

// Injected link faults: `rank`'s NIC links, both directions, at `fraction` of their modeled bandwidth (the
// platform must be built and running).
void set_nic_bandwidth(const Topology& topo, int rank, double fraction);

// Names of the links a message from rank a to rank b crosses, in order, and the route's latency in seconds
// (for tests and for `eplab probe`-style introspection).
std::vector<std::string> route_link_names(const Platform& p, int a, int b, double* latency = nullptr);

// The platform's links as the timeline and the report's link utilization see them, in a fixed order: per rank
// scale-up up/down and NIC up/down (4 per rank), then each rail's (leaf's) spine up/down. Capacities are the
// modeled ones (nominal x efficiency), the same the platform builds.
std::vector<LinkInfo> platform_links(const Topology& topo);
// Indices into platform_links() of the links a message from rank a to rank b crosses (the same arithmetic
// as the platform's routes; a test keeps the two in step). Returns how many were written into `out`.
int route_link_ids(const Topology& topo, int a, int b, int out[4]);

}  // namespace eplab::sim
