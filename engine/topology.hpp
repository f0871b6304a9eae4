// Cluster description: nodes of GPUs joined by a scale-up domain (NVLink or PCIe) and a scale-out network
// (one RDMA NIC per GPU, rail-optimized or fat-tree). Presets describe published testbeds.
#pragma once

#include <string>
#include <vector>

namespace eplab {

enum class ScaleOutKind { kRailOptimized, kFatTree };
enum class ScaleUpKind { kNvlink, kPcie };
enum class LinkClass { kSelf = 0, kScaleUp = 1, kScaleOut = 2 };
const char* link_class_name(LinkClass c);

struct GpuSpec {
  std::string name;
  int sms = 132;
  double hbm_GBps = 3350;    // HBM bandwidth, GB/s
  double bf16_tflops = 989;  // dense peak
  double fp8_tflops = 1979;  // dense peak
};

struct ClusterSpec {
  std::string name;
  std::string description;
  int nodes = 1;
  int gpus_per_node = 8;
  GpuSpec gpu;
  // Scale-up domain: per-GPU unidirectional bandwidth into the node switch and one-way latency.
  ScaleUpKind scaleup = ScaleUpKind::kNvlink;
  double scaleup_GBps = 160;
  double scaleup_latency_s = 1e-6;
  // Scale-out: NICs per GPU, per-NIC unidirectional bandwidth, NIC latency, switch hop latency.
  int nics_per_gpu = 1;
  double nic_GBps = 50;
  double nic_latency_s = 2e-6;
  ScaleOutKind scaleout = ScaleOutKind::kRailOptimized;
  double oversubscription = 1.0;  // fat-tree only: leaf down / up bandwidth ratio
  double switch_latency_s = 0.5e-6;
  // Calibrated physical parameters, shared by every preset and every algorithm (docs/sim.md gives the source of
  // each value and the calibration against DeepEP's published figures). Only simulated backends read them.
  double scaleup_efficiency = 0.67;  // fraction of nominal scale-up bandwidth that SM-driven copies reach
  double nic_efficiency = 0.9;       // RDMA goodput over the NIC's signalling rate (headers, CQ handling)
  double round_overhead_s = 5e-6;    // fixed cost of one exchange round: kernel launch + completion signalling
  double compute_efficiency = 0.6;   // fraction of peak FLOP/s and HBM bandwidth an expert FFN reaches

  int size() const { return nodes * gpus_per_node; }
};

// Rank arithmetic over a ClusterSpec. Rank r lives on node r / gpus_per_node at local index r % gpus_per_node;
// the local index is also the rail.
class Topology {
 public:
  Topology() = default;
  explicit Topology(ClusterSpec spec);

  const ClusterSpec& spec() const { return spec_; }
  int size() const { return spec_.size(); }
  int nodes() const { return spec_.nodes; }
  int gpus_per_node() const { return spec_.gpus_per_node; }
  int node_of(int rank) const { return rank / spec_.gpus_per_node; }
  int local_of(int rank) const { return rank % spec_.gpus_per_node; }
  int rank_of(int node, int local) const { return node * spec_.gpus_per_node + local; }
  LinkClass distance(int a, int b) const;

 private:
  ClusterSpec spec_;
};

// Presets: h800-cx7 (DeepEP's testbed), h100-ib, h200-ib, a100-roce, pcie-node.
std::vector<std::string> cluster_preset_names();
// Throws EplabError naming the unknown preset and listing the known ones.
ClusterSpec cluster_preset(const std::string& name);

}  // namespace eplab
