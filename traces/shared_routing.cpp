#include "traces/shared_routing.hpp"

#include <sched.h>

#include <algorithm>
#include <atomic>
#include <exception>
#include <thread>
#include <utility>

#include "engine/error.hpp"

namespace eplab {

namespace {

// The cores this process may run on: a run pinned to one core (taskset) gains nothing from a second thread,
// which would only take turns with the first.
int usable_cores() {
  cpu_set_t set;
  if (sched_getaffinity(0, sizeof set, &set) == 0) return CPU_COUNT(&set);
  return static_cast<int>(std::thread::hardware_concurrency());
}

}  // namespace

SharedRoutingSource::SharedRoutingSource(std::shared_ptr<RoutingSource> inner, int ranks, bool prefetch, int steps,
                                         int layers)
    : inner_(std::move(inner)), ranks_(ranks), prefetch_(prefetch), steps_(steps), layers_(layers),
      cores_(std::max(1, usable_cores())) {
  if (prefetch_ && !inner_->concurrent())
    throw EplabError("routing '" + inner_->name() +
                     "': a parallel prefetch needs a source that allows concurrent calls");
}

SharedRoutingSource::~SharedRoutingSource() {
  if (ahead_thread_.joinable()) ahead_thread_.join();
}

void SharedRoutingSource::keep(int step, int layer, int rank, RoutingBatch b) {
  std::lock_guard<std::mutex> lock(mu_);
  Held& h = held_[{step, layer}];
  if (h.batches.empty()) {
    h.batches.resize(ranks_);
    h.present.assign(ranks_, false);
  }
  h.left += !h.present[rank];
  h.present[rank] = true;
  h.batches[rank] = std::move(b);
}

void SharedRoutingSource::prefetch(int step, int layer, Held& held, int workers) {
  held.batches.assign(ranks_, RoutingBatch{});
  workers = std::clamp(workers, 1, ranks_);
  std::atomic<int> next{0};
  std::vector<std::exception_ptr> errors(workers);
  const auto work = [&](int w) {
    try {
      for (int r; (r = next.fetch_add(1)) < ranks_;) held.batches[r] = inner_->batch(step, layer, r);
    } catch (...) {
      errors[w] = std::current_exception();
      next = ranks_;
    }
  };
  std::vector<std::thread> threads;
  for (int w = 1; w < workers; ++w) threads.emplace_back(work, w);
  work(0);
  for (std::thread& t : threads) t.join();
  for (const std::exception_ptr& e : errors)
    if (e) std::rethrow_exception(e);
  held.present.assign(ranks_, true);
  held.left = ranks_;
}

void SharedRoutingSource::start_ahead(int step, int layer) {
  if (steps_ <= 0 || layers_ <= 0 || cores_ < 2) return;
  Call next = layer + 1 < layers_ ? Call{step, layer + 1} : Call{step + 1, 0};
  if (next.first >= steps_ || held_.count(next) || ahead_call_ == next) return;
  if (ahead_thread_.joinable()) ahead_thread_.join();  // a call that was never requested: its batches go
  ahead_call_ = next;
  ahead_ = Held{};
  ahead_error_ = nullptr;
  ahead_thread_ = std::thread([this, next] {
    try {
      prefetch(next.first, next.second, ahead_, cores_ - 1);
    } catch (...) {
      ahead_error_ = std::current_exception();
    }
  });
}

RoutingBatch SharedRoutingSource::batch(int step, int layer, int rank) {
  std::unique_lock<std::mutex> lock(mu_);
  auto it = held_.find({step, layer});
  if (it == held_.end() && prefetch_) {
    Held fresh;
    if (ahead_call_ == Call{step, layer}) {
      ahead_thread_.join();
      ahead_call_ = {-1, -1};
      if (ahead_error_) std::rethrow_exception(std::exchange(ahead_error_, nullptr));
      fresh = std::move(ahead_);
    } else {
      prefetch(step, layer, fresh, cores_);
    }
    it = held_.emplace(Call{step, layer}, std::move(fresh)).first;
    start_ahead(step, layer);
  }
  if (it != held_.end() && it->second.present[rank]) {
    Held& h = it->second;
    RoutingBatch b = std::move(h.batches[rank]);
    h.present[rank] = false;
    if (--h.left == 0) held_.erase(it);
    return b;
  }
  if (inner_->concurrent()) lock.unlock();
  return inner_->batch(step, layer, rank);
}

}  // namespace eplab
