// The interface a fabric that models links (sim) reports each exchange round's bytes per link through
// (Fabric::record_links). The driver's Timeline implements it; the engine and the backends know only this.
#pragma once

#include <string>
#include <vector>

namespace eplab {

// One modeled link: its name in the platform, its class ("nvlink", "nic", "spine") and its modeled capacity.
struct LinkInfo {
  std::string name;
  std::string cls;
  double Bps = 0;
};

// Calls may come from any thread.
class LinkRecorder {
 public:
  virtual ~LinkRecorder() = default;
  // Once, before any round: the links, in the order link_round indexes them.
  virtual void set_links(std::vector<LinkInfo> links) = 0;
  // One exchange round of phase `phase` (the fabric's phase name) ran from t0 to t1 (seconds of Fabric::now())
  // and carried link_bytes[i] bytes over link i.
  virtual void link_round(const std::string& phase, double t0, double t1, const std::vector<double>& link_bytes) = 0;
};

}  // namespace eplab
