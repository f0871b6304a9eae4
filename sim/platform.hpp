// Platform builder: turns a ClusterSpec into SimGrid hosts (one per GPU) and links (per-GPU scale-up and NIC
// links, per-direction; rail or leaf uplinks to a spine), inside one NetZone whose routes are computed from
// rank arithmetic, so memory grows with the rank count rather than with its square.
#pragma once

#include <string>
#include <vector>

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

// Names of the links a message from rank a to rank b crosses, in order, and the route's latency in seconds
// (for tests and for `eplab probe`-style introspection).
std::vector<std::string> route_link_names(const Platform& p, int a, int b, double* latency = nullptr);

}  // namespace eplab::sim
