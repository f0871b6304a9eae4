#include "engine/topology.hpp"

#include <sstream>

#include "engine/error.hpp"

namespace eplab {

const char* link_class_name(LinkClass c) {
  switch (c) {
    case LinkClass::kSelf:
      return "self";
    case LinkClass::kScaleUp:
      return "scaleup";
    case LinkClass::kScaleOut:
      return "scaleout";
  }
  return "?";
}

Topology::Topology(ClusterSpec spec) : spec_(std::move(spec)) {
  if (spec_.nodes < 1)
    throw EplabError("cluster '" + spec_.name + "': nodes must be >= 1, got " + std::to_string(spec_.nodes));
  if (spec_.gpus_per_node < 1)
    throw EplabError("cluster '" + spec_.name + "': gpus per node must be >= 1, got " +
                     std::to_string(spec_.gpus_per_node));
  if (spec_.scaleup_GBps <= 0 || spec_.nic_GBps <= 0)
    throw EplabError("cluster '" + spec_.name + "': link bandwidths must be positive");
}

LinkClass Topology::distance(int a, int b) const {
  if (a == b) return LinkClass::kSelf;
  return node_of(a) == node_of(b) ? LinkClass::kScaleUp : LinkClass::kScaleOut;
}

namespace {

// Peak figures are vendor datasheet values (dense, no sparsity). Link bandwidths are per GPU and per
// direction at the nominal signalling rate; what fraction of them software reaches is the simulator's
// calibrated efficiency, not a property of the preset.
ClusterSpec h800_cx7() {
  ClusterSpec c;
  c.name = "h800-cx7";
  c.description =
      "DeepEP's testbed: H800 SXM, NVLink 200 GB/s per GPU, one ConnectX-7 400 Gb/s IB NIC per GPU, rail-optimized";
  c.nodes = 32;
  c.gpus_per_node = 8;
  c.gpu = {"H800-SXM", 132, 3350, 989, 1979};
  c.scaleup = ScaleUpKind::kNvlink;
  c.scaleup_GBps = 200;  // H800: 8 NVLink4 links x 25 GB/s per direction
  c.scaleup_latency_s = 1.0e-6;
  c.nic_GBps = 50;  // 400 Gb/s
  c.nic_latency_s = 2.0e-6;
  c.scaleout = ScaleOutKind::kRailOptimized;
  c.switch_latency_s = 0.6e-6;
  return c;
}

ClusterSpec h100_ib() {
  ClusterSpec c = h800_cx7();
  c.name = "h100-ib";
  c.description = "H100 SXM, NVLink 450 GB/s per GPU, one 400 Gb/s InfiniBand NIC per GPU, rail-optimized";
  c.gpu = {"H100-SXM", 132, 3350, 989, 1979};
  c.scaleup_GBps = 450;  // 18 NVLink4 links x 25 GB/s
  return c;
}

ClusterSpec h200_ib() {
  ClusterSpec c = h100_ib();
  c.name = "h200-ib";
  c.description =
      "H200 SXM (4.8 TB/s HBM3e), NVLink 450 GB/s per GPU, one 400 Gb/s InfiniBand NIC per GPU, rail-optimized";
  c.gpu = {"H200-SXM", 132, 4800, 989, 1979};
  return c;
}

ClusterSpec a100_roce() {
  ClusterSpec c;
  c.name = "a100-roce";
  c.description = "A100 SXM 80GB, NVLink 300 GB/s per GPU, one 200 Gb/s RoCE NIC per GPU, fat-tree";
  c.nodes = 32;
  c.gpus_per_node = 8;
  c.gpu = {"A100-SXM", 108, 2039, 312, 312};  // no FP8 tensor cores: FP8 runs at the BF16 rate
  c.scaleup_GBps = 300;                       // 12 NVLink3 links x 25 GB/s
  c.scaleup_latency_s = 1.5e-6;
  c.nic_GBps = 25;  // 200 Gb/s
  c.nic_latency_s = 3.0e-6;
  c.scaleout = ScaleOutKind::kFatTree;
  c.oversubscription = 1.0;
  c.switch_latency_s = 1.0e-6;
  return c;
}

ClusterSpec pcie_node() {
  ClusterSpec c;
  c.name = "pcie-node";
  c.description = "one node of 8 L40S on PCIe Gen4 x16 (no NVLink), one 100 Gb/s NIC per GPU";
  c.nodes = 1;
  c.gpus_per_node = 8;
  c.gpu = {"L40S", 142, 864, 362, 733};
  c.scaleup = ScaleUpKind::kPcie;
  c.scaleup_GBps = 32;  // PCIe Gen4 x16 per direction
  c.scaleup_latency_s = 2.0e-6;
  c.nic_GBps = 12.5;  // 100 Gb/s
  c.nic_latency_s = 3.0e-6;
  c.scaleout = ScaleOutKind::kFatTree;
  c.switch_latency_s = 1.0e-6;
  return c;
}

}  // namespace

std::vector<std::string> cluster_preset_names() { return {"h800-cx7", "h100-ib", "h200-ib", "a100-roce", "pcie-node"}; }

ClusterSpec cluster_preset(const std::string& name) {
  if (name == "h800-cx7") return h800_cx7();
  if (name == "h100-ib") return h100_ib();
  if (name == "h200-ib") return h200_ib();
  if (name == "a100-roce") return a100_roce();
  if (name == "pcie-node") return pcie_node();
  std::ostringstream os;
  os << "unknown cluster preset '" << name << "' (known:";
  for (auto& n : cluster_preset_names()) os << ' ' << n;
  os << ')';
  throw EplabError(os.str());
}

}  // namespace eplab
