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
    : inner_(std::move(inner)),
      ranks_(ranks),
      prefetch_(prefetch),
      steps_(steps),
      layers_(layers),
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

void SharedRoutingSource::work(Job& job) {
  try {
    for (int r; (r = job.next.fetch_add(1)) < ranks_;)
      job.batches[r] = inner_->batch(job.call.first, job.call.second, r);
  } catch (...) {
    std::lock_guard<std::mutex> lock(job.mu);
    if (!job.error) job.error = std::current_exception();
    job.next = ranks_;
  }
}

void SharedRoutingSource::run(Job& job, int workers) {
  workers = std::clamp(workers, 1, ranks_);
  std::vector<std::thread> threads;
  for (int w = 1; w < workers; ++w) threads.emplace_back([this, &job] { work(job); });
  work(job);
  for (std::thread& t : threads) t.join();
}

void SharedRoutingSource::prefetch(int step, int layer, Held& held, int workers) {
  Job job;
  job.call = {step, layer};
  job.batches.resize(ranks_);
  run(job, workers);
  if (job.error) std::rethrow_exception(job.error);
  held.batches = std::move(job.batches);
  held.present.assign(ranks_, true);
  held.left = ranks_;
}

void SharedRoutingSource::start_ahead(int step, int layer) {
  if (steps_ <= 0 || layers_ <= 0 || cores_ < 2) return;
  Call next = layer + 1 < layers_ ? Call{step, layer + 1} : Call{step + 1, 0};
  if (next.first >= steps_ || held_.count(next) || (ahead_ && ahead_->call == next)) return;
  if (ahead_thread_.joinable()) ahead_thread_.join();  // a call that was never requested: its batches go
  ahead_ = std::make_unique<Job>();
  ahead_->call = next;
  ahead_->batches.resize(ranks_);
  ahead_thread_ = std::thread([this, job = ahead_.get()] { run(*job, cores_ - 1); });
}

RoutingBatch SharedRoutingSource::batch(int step, int layer, int rank) {
  std::unique_lock<std::mutex> lock(mu_);
  auto it = held_.find({step, layer});
  if (it == held_.end() && prefetch_) {
    Held fresh;
    if (ahead_ && ahead_->call == Call{step, layer}) {
      work(*ahead_);  // the ranks the background has not started yet, here, rather than waiting for them
      ahead_thread_.join();
      const std::unique_ptr<Job> job = std::move(ahead_);
      if (job->error) std::rethrow_exception(job->error);
      fresh.batches = std::move(job->batches);
      fresh.present.assign(ranks_, true);
      fresh.left = ranks_;
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
