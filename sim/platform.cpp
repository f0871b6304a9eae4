#include "sim/platform.hpp"

#include <simgrid/kernel/routing/NetPoint.hpp>
#include <simgrid/kernel/routing/NetZoneImpl.hpp>
#include <simgrid/s4u/Host.hpp>
#include <simgrid/s4u/Link.hpp>
#include <simgrid/s4u/NetZone.hpp>

#include "engine/error.hpp"

namespace eplab::sim {
namespace {

namespace kr = simgrid::kernel::routing;
using LinkImpl = simgrid::kernel::resource::StandardLinkImpl;

// Every GPU has its own up and down link into the node's scale-up switch and into its NIC's switch; switches
// themselves are non-blocking except for the uplinks of a rail (rail-optimized) or node leaf (fat-tree) towards
// the spine. A route is therefore a short list computed from (node, local index) of both ends, which keeps
// routing O(1) per pair and the platform O(ranks) in memory: a full route table would need ranks² entries.
class GpuClusterZone : public kr::NetZoneImpl {
 public:
  GpuClusterZone(const Topology& topo) : kr::NetZoneImpl("eplab-cluster"), topo_(topo) {}

  void get_local_route(const kr::NetPoint* src, const kr::NetPoint* dst, kr::Route* into, double* latency) override {
    const int a = static_cast<int>(src->id()), b = static_cast<int>(dst->id());
    if (a == b) return;  // a GPU's copy to itself costs no network time
    const ClusterSpec& s = topo_.spec();
    double lat = 0;
    if (topo_.node_of(a) == topo_.node_of(b)) {
      into->link_list_.push_back(up_[a]);
      into->link_list_.push_back(down_[b]);
      lat = s.scaleup_latency_s;
    } else {
      into->link_list_.push_back(nic_up_[a]);
      lat = s.nic_latency_s + s.switch_latency_s;
      const int ga = group_of(a), gb = group_of(b);
      if (ga != gb) {
        into->link_list_.push_back(group_up_[ga]);
        into->link_list_.push_back(group_down_[gb]);
        lat += 2 * s.switch_latency_s;
      }
      into->link_list_.push_back(nic_down_[b]);
    }
    if (latency) *latency += lat;
  }

  // Rail-optimized: a rail switch per local index, spine above; fat-tree: a leaf per node, spine above.
  int group_of(int rank) const {
    return topo_.spec().scaleout == ScaleOutKind::kRailOptimized ? topo_.local_of(rank) : topo_.node_of(rank);
  }

  const Topology& topo_;
  std::vector<LinkImpl*> up_, down_, nic_up_, nic_down_, group_up_, group_down_;
};

}  // namespace

Platform build_platform(const Topology& topo) {
  const ClusterSpec& s = topo.spec();
  if (s.scaleup_efficiency <= 0 || s.scaleup_efficiency > 1 || s.nic_efficiency <= 0 || s.nic_efficiency > 1)
    throw EplabError("cluster '" + s.name + "': link efficiencies must lie in (0, 1]");
  if (s.oversubscription < 1) throw EplabError("cluster '" + s.name + "': oversubscription must be >= 1");
  // The zone is owned by the engine once it is the root (SimGrid deletes it with the platform).
  auto* zone = new GpuClusterZone(topo);
  auto* iface = zone->get_iface();
  Platform p;
  const int R = topo.size();
  const double up_Bps = s.scaleup_GBps * 1e9 * s.scaleup_efficiency;
  const double nic_Bps = s.nic_GBps * 1e9 * s.nic_efficiency * s.nics_per_gpu;
  auto link = [&](const std::string& name, double bw, double lat) {
    auto* l = iface->create_link(name, bw);
    l->set_latency(lat);
    return l->seal()->get_impl();
  };
  for (int r = 0; r < R; ++r) {
    // Hosts only carry actors; compute time comes from the roofline model (sleep), not from host speed.
    p.hosts.push_back(iface->create_host("gpu" + std::to_string(r), 1e15));
    const std::string g = "gpu" + std::to_string(r);
    zone->up_.push_back(link(g + "-scaleup-up", up_Bps, s.scaleup_latency_s / 2));
    zone->down_.push_back(link(g + "-scaleup-down", up_Bps, s.scaleup_latency_s / 2));
    zone->nic_up_.push_back(link(g + "-nic-up", nic_Bps, s.nic_latency_s / 2));
    zone->nic_down_.push_back(link(g + "-nic-down", nic_Bps, s.nic_latency_s / 2));
  }
  const bool rail = s.scaleout == ScaleOutKind::kRailOptimized;
  const int groups = rail ? topo.gpus_per_node() : topo.nodes();
  const int members = rail ? topo.nodes() : topo.gpus_per_node();
  // A rail's (leaf's) uplink capacity is its members' NIC bandwidth divided by the oversubscription.
  const double group_Bps = members * nic_Bps / s.oversubscription;
  for (int g = 0; g < groups; ++g) {
    const std::string n = std::string(rail ? "rail" : "leaf") + std::to_string(g);
    zone->group_up_.push_back(link(n + "-spine-up", group_Bps, s.switch_latency_s));
    zone->group_down_.push_back(link(n + "-spine-down", group_Bps, s.switch_latency_s));
  }
  iface->seal();
  return p;
}

void set_nic_bandwidth(const Topology& topo, int rank, double fraction) {
  const ClusterSpec& s = topo.spec();
  const double nic_Bps = s.nic_GBps * 1e9 * s.nic_efficiency * s.nics_per_gpu;
  const std::string g = "gpu" + std::to_string(rank);
  for (const char* dir : {"-nic-up", "-nic-down"})
    simgrid::s4u::Link::by_name(g + dir)->set_bandwidth(nic_Bps * fraction);
}

std::vector<std::string> route_link_names(const Platform& p, int a, int b, double* latency) {
  std::vector<simgrid::s4u::Link*> links;
  double lat = 0;
  p.hosts.at(a)->route_to(p.hosts.at(b), links, &lat);
  if (latency) *latency = lat;
  std::vector<std::string> names;
  for (auto* l : links) names.push_back(l->get_name());
  return names;
}

std::vector<LinkInfo> platform_links(const Topology& topo) {
  const ClusterSpec& s = topo.spec();
  const double up_Bps = s.scaleup_GBps * 1e9 * s.scaleup_efficiency;
  const double nic_Bps = s.nic_GBps * 1e9 * s.nic_efficiency * s.nics_per_gpu;
  const std::string up_cls = s.scaleup == ScaleUpKind::kPcie ? "pcie" : "nvlink";
  std::vector<LinkInfo> links;
  for (int r = 0; r < topo.size(); ++r) {
    const std::string g = "gpu" + std::to_string(r);
    links.push_back({g + "-scaleup-up", up_cls, up_Bps});
    links.push_back({g + "-scaleup-down", up_cls, up_Bps});
    links.push_back({g + "-nic-up", "nic", nic_Bps});
    links.push_back({g + "-nic-down", "nic", nic_Bps});
  }
  const bool rail = s.scaleout == ScaleOutKind::kRailOptimized;
  const int groups = rail ? topo.gpus_per_node() : topo.nodes();
  const int members = rail ? topo.nodes() : topo.gpus_per_node();
  const double group_Bps = members * nic_Bps / s.oversubscription;
  for (int g = 0; g < groups; ++g) {
    const std::string n = std::string(rail ? "rail" : "leaf") + std::to_string(g);
    links.push_back({n + "-spine-up", "spine", group_Bps});
    links.push_back({n + "-spine-down", "spine", group_Bps});
  }
  return links;
}

int route_link_ids(const Topology& topo, int a, int b, int out[4]) {
  if (a == b) return 0;
  if (topo.node_of(a) == topo.node_of(b)) {
    out[0] = 4 * a;
    out[1] = 4 * b + 1;
    return 2;
  }
  const bool rail = topo.spec().scaleout == ScaleOutKind::kRailOptimized;
  const int ga = rail ? topo.local_of(a) : topo.node_of(a), gb = rail ? topo.local_of(b) : topo.node_of(b);
  int n = 0;
  out[n++] = 4 * a + 2;
  if (ga != gb) {
    out[n++] = 4 * topo.size() + 2 * ga;
    out[n++] = 4 * topo.size() + 2 * gb + 1;
  }
  out[n++] = 4 * b + 3;
  return n;
}

}  // namespace eplab::sim
