// A RoutingSource shared by the ranks of one process (threads, simulated actors): a performance cache in front
// of the source, never a channel between ranks (every batch still depends only on (step, layer, rank)). It
// hands out batches generated ahead (at planning time, or by a parallel prefetch) once each, and serializes
// calls into a source that is not concurrent(). A multi-process run gives each process its own source.
#pragma once

#include <exception>
#include <map>
#include <memory>
#include <mutex>
#include <thread>
#include <utility>
#include <vector>

#include "traces/routing_source.hpp"

namespace eplab {

class SharedRoutingSource : public RoutingSource {
 public:
  // `ranks`: the world size. `prefetch` (needs inner->concurrent()): the first request for a (step, layer)
  // generates every rank's batch of it on all the cores the process may use (its affinity mask). Simulated ranks
  // are actors on one OS thread, so batches generated as each asks would be generated one after another; this
  // keeps them parallel. With `steps` and `layers` (the run's calls, requested step by step, layer by layer) and
  // more than one core, the next call's batches are generated in the background, on all cores but one, while
  // the ranks work on this one.
  SharedRoutingSource(std::shared_ptr<RoutingSource> inner, int ranks, bool prefetch, int steps = 0, int layers = 0);
  ~SharedRoutingSource() override;

  std::string name() const override { return inner_->name(); }
  int num_steps() const override { return inner_->num_steps(); }
  int num_layers() const override { return inner_->num_layers(); }
  int fixed_tokens() const override { return inner_->fixed_tokens(); }
  bool concurrent() const override { return true; }
  // A kept batch is moved out on its first request; later requests for it generate it again.
  RoutingBatch batch(int step, int layer, int rank) override;

  // Holds a batch generated elsewhere (the planner's) for its first request.
  void keep(int step, int layer, int rank, RoutingBatch b);

 private:
  using Call = std::pair<int, int>;  // (step, layer)
  struct Held {
    std::vector<RoutingBatch> batches;  // [rank]
    std::vector<bool> present;          // [rank]: not handed out yet
    int left = 0;
  };
  void prefetch(int step, int layer, Held& held, int workers);
  // Starts generating the call after (step, layer) in the background (under mu_).
  void start_ahead(int step, int layer);

  std::shared_ptr<RoutingSource> inner_;
  const int ranks_;
  const bool prefetch_;
  const int steps_, layers_, cores_;
  std::mutex mu_;
  std::map<Call, Held> held_;  // a call leaves the map once every rank took its batch
  // The background generation of one call ahead: its thread writes only ahead_ and ahead_error_.
  std::thread ahead_thread_;
  Call ahead_call_{-1, -1};
  Held ahead_;
  std::exception_ptr ahead_error_;
};

}  // namespace eplab
