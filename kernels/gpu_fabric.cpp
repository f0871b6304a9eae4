// GpuFabric: the `real` backend's Fabric. Matching, deadlines and failure release follow emu/thread_fabric
// (by peer and tag in posting order; a hang or a failing rank releases everyone), but every message travels
// through GPU memory: H2D into a device buffer of the sender on the sender's stream, then D2D (or peer copy)
// into a device buffer of the receiver and D2H into the receive buffer on the receiver's stream, ordered by
// a CUDA event and completed by another. The engine's own buffers stay in host memory (docs/gpu.md).
#include <cuda_runtime_api.h>

#include <algorithm>
#include <bit>
#include <chrono>
#include <condition_variable>
#include <deque>
#include <exception>
#include <list>
#include <map>
#include <mutex>
#include <thread>

#include "kernels/gpu_backend.hpp"

namespace eplab {
namespace {

std::string cuda_text(cudaError_t e) { return std::string(cudaGetErrorName(e)) + ": " + cudaGetErrorString(e); }

// An event shared by the request that recorded it and the message that carries it to the receiver.
struct CudaEvent {
  cudaEvent_t ev = nullptr;
  ~CudaEvent() {
    if (ev) cudaEventDestroy(ev);
  }
};

// One rank's device buffers, reused by power-of-two size class: a cudaFree per message would synchronize
// the whole device. Only the owning rank's thread acquires (its device is current); any thread releases.
class DevicePool {
 public:
  explicit DevicePool(int device) : device_(device) {}
  ~DevicePool() {
    cudaSetDevice(device_);
    for (void* p : all_) cudaFree(p);
  }
  // Returns nullptr with *err set when cudaMalloc fails, so the caller can name rank, peer and tag.
  void* acquire(size_t bytes, size_t* cls, cudaError_t* err) {
    *cls = std::bit_ceil(std::max<size_t>(bytes, 256));
    {
      std::lock_guard<std::mutex> lock(mu_);
      auto& v = free_[*cls];
      if (!v.empty()) {
        void* p = v.back();
        v.pop_back();
        return p;
      }
    }
    void* p = nullptr;
    *err = cudaMalloc(&p, *cls);
    if (*err != cudaSuccess) return nullptr;
    std::lock_guard<std::mutex> lock(mu_);
    all_.push_back(p);
    return p;
  }
  void release(void* p, size_t cls) {
    std::lock_guard<std::mutex> lock(mu_);
    free_[cls].push_back(p);
  }
  int device() const { return device_; }

 private:
  int device_;
  std::mutex mu_;
  std::map<size_t, std::vector<void*>> free_;
  std::vector<void*> all_;
};

struct Message {
  int src = -1;
  Tag tag = 0;
  size_t bytes = 0;
  void* dev = nullptr;  // in the sender's pool; the receiver gives it back once its copy is done
  size_t cls = 0;
  std::shared_ptr<CudaEvent> staged;  // the H2D into `dev` has finished
};

struct SendState : RequestState {
  int peer = -1;
  Tag tag = 0;
  std::shared_ptr<CudaEvent> staged;
};

struct RecvState : RequestState {
  int peer = -1;
  Tag tag = 0;
  MutBuf buf;
  bool matched = false;  // guarded by the world lock
  Message msg;
  bool issued = false;  // touched by the receiving rank's thread only
  void* dev = nullptr;
  size_t cls = 0;
  std::shared_ptr<CudaEvent> copied;
};

class GpuWorld {
 public:
  GpuWorld(Topology topo, double timeout_s, int devices)
      : topo_(std::move(topo)), timeout_s_(timeout_s), devices_(devices), boxes_(topo_.size()) {
    for (int r = 0; r < topo_.size(); ++r) pools_.push_back(std::make_unique<DevicePool>(device_of(r)));
  }
  ~GpuWorld() {
    // Messages nobody received still hold pool buffers and events; let every copy finish before freeing.
    for (int d = 0; d < std::min(devices_, topo_.size()); ++d) {
      cudaSetDevice(d);
      cudaDeviceSynchronize();
    }
  }
  int device_of(int rank) const { return rank % devices_; }
  void abort(const std::string& why) {
    std::lock_guard<std::mutex> lock(mu_);
    if (failure_.empty()) failure_ = why;
    cv_.notify_all();
  }

  struct Mailbox {
    std::deque<Message> unexpected;
    std::list<std::shared_ptr<RecvState>> posted;
  };
  Topology topo_;
  double timeout_s_;
  int devices_;
  std::mutex mu_;
  std::condition_variable cv_;
  std::vector<Mailbox> boxes_;
  std::vector<std::unique_ptr<DevicePool>> pools_;
  std::string failure_;
  int barrier_count_ = 0;
  long barrier_gen_ = 0;
  std::chrono::steady_clock::time_point t0_ = std::chrono::steady_clock::now();
};

class GpuFabric : public Fabric {
 public:
  GpuFabric(GpuWorld& world, int rank) : world_(world), rank_(rank), device_(world.device_of(rank)) {
    cudaError_t e = cudaSetDevice(device_);
    if (e == cudaSuccess) e = cudaStreamCreateWithFlags(&stream_, cudaStreamNonBlocking);
    if (e != cudaSuccess)
      throw FabricError("rank " + std::to_string(rank_) + ": cannot set up CUDA device " + std::to_string(device_) +
                        ": " + cuda_text(e));
  }
  ~GpuFabric() override {
    cudaStreamSynchronize(stream_);
    cudaStreamDestroy(stream_);
  }
  int rank() const override { return rank_; }
  int size() const override { return world_.topo_.size(); }
  const Topology& topology() const override { return world_.topo_; }
  Caps caps() const override { return Caps{}; }
  Request isend(int peer, Tag tag, ConstBuf data) override;
  Request irecv(int peer, Tag tag, MutBuf data) override;
  void wait_all(std::span<Request> reqs, Deadline d) override;
  double now() const override {
    return std::chrono::duration<double>(std::chrono::steady_clock::now() - world_.t0_).count();
  }
  void compute(const ComputeCost&) override {}
  void barrier() override;

 private:
  std::string where(int peer, Tag tag) const {
    return "rank " + std::to_string(rank_) + " (device " + std::to_string(device_) + "), peer " + std::to_string(peer) +
           ", tag " + describe_tag(tag) + ", phase " + phase_;
  }
  void check_peer(int peer, const char* op, Tag tag) const {
    if (peer < 0 || peer >= size())
      throw FabricError(std::string(op) + ": " + where(peer, tag) + ": peer outside 0.." + std::to_string(size() - 1));
  }
  void cuda_check(cudaError_t e, const char* call, int peer, Tag tag) const {
    if (e != cudaSuccess) throw FabricError(std::string(call) + ": " + where(peer, tag) + ": " + cuda_text(e));
  }
  std::shared_ptr<CudaEvent> record(int peer, Tag tag) {
    auto ev = std::make_shared<CudaEvent>();
    cuda_check(cudaEventCreateWithFlags(&ev->ev, cudaEventDisableTiming), "cudaEventCreate", peer, tag);
    cuda_check(cudaEventRecord(ev->ev, stream_), "cudaEventRecord", peer, tag);
    return ev;
  }
  // Starts the copies of a matched receive; false while it is not matched yet.
  bool issue(RecvState& r);
  // True once the GPU work of a request has finished (and its buffers are back in their pools).
  bool finished(RequestState& s);

  GpuWorld& world_;
  int rank_;
  int device_;
  cudaStream_t stream_ = nullptr;
};

Request GpuFabric::isend(int peer, Tag tag, ConstBuf data) {
  check_peer(peer, "isend", tag);
  if (data.phantom_bytes > 0 || (data.ptr == nullptr && data.bytes > 0))
    throw FabricError("isend: " + where(peer, tag) + ": the real fabric moves real bytes only (phantom payload of " +
                      std::to_string(data.total()) + " bytes)");
  auto st = std::make_shared<SendState>();
  st->peer = peer;
  st->tag = tag;
  st->bytes = st->total_bytes = data.bytes;
  Message m;
  m.src = rank_;
  m.tag = tag;
  m.bytes = data.bytes;
  if (data.bytes > 0) {
    cudaError_t err = cudaSuccess;
    m.dev = world_.pools_[rank_]->acquire(data.bytes, &m.cls, &err);
    cuda_check(err, "cudaMalloc (send staging)", peer, tag);
    cuda_check(cudaMemcpyAsync(m.dev, data.ptr, data.bytes, cudaMemcpyHostToDevice, stream_), "cudaMemcpyAsync H2D",
               peer, tag);
    m.staged = st->staged = record(peer, tag);
  } else {
    st->done = true;  // nothing to stage
  }
  std::lock_guard<std::mutex> lock(world_.mu_);
  auto& box = world_.boxes_[peer];
  auto it = std::find_if(box.posted.begin(), box.posted.end(),
                         [&](const auto& r) { return r->peer == rank_ && r->tag == tag; });
  if (it != box.posted.end()) {
    (*it)->msg = std::move(m);
    (*it)->matched = true;
    box.posted.erase(it);
  } else {
    box.unexpected.push_back(std::move(m));
  }
  world_.cv_.notify_all();
  return Request(st);
}

Request GpuFabric::irecv(int peer, Tag tag, MutBuf data) {
  check_peer(peer, "irecv", tag);
  auto st = std::make_shared<RecvState>();
  st->peer = peer;
  st->tag = tag;
  st->buf = data;
  std::lock_guard<std::mutex> lock(world_.mu_);
  auto& box = world_.boxes_[rank_];
  auto it = std::find_if(box.unexpected.begin(), box.unexpected.end(),
                         [&](const Message& m) { return m.src == peer && m.tag == tag; });
  if (it != box.unexpected.end()) {
    st->msg = std::move(*it);
    st->matched = true;
    box.unexpected.erase(it);
  } else {
    box.posted.push_back(st);
  }
  return Request(st);
}

bool GpuFabric::issue(RecvState& r) {
  if (r.issued) return true;
  {
    std::lock_guard<std::mutex> lock(world_.mu_);
    if (!r.matched) return false;
  }
  r.issued = true;
  Message& m = r.msg;
  r.bytes = r.total_bytes = m.bytes;
  if (m.bytes > r.buf.capacity) {
    r.error = "irecv: " + where(r.peer, r.tag) + ": message of " + std::to_string(m.bytes) + " bytes exceeds the " +
              std::to_string(r.buf.capacity) + "-byte receive buffer";
    // The sender's later H2D into this buffer queues behind the pending one on the same stream.
    if (m.dev) world_.pools_[m.src]->release(m.dev, m.cls);
    m.dev = nullptr;
    r.done = true;
    return true;
  }
  if (m.bytes == 0) {
    r.done = true;
    return true;
  }
  cudaError_t err = cudaSuccess;
  r.dev = world_.pools_[rank_]->acquire(m.bytes, &r.cls, &err);
  cuda_check(err, "cudaMalloc (receive staging)", r.peer, r.tag);
  cuda_check(cudaStreamWaitEvent(stream_, m.staged->ev, 0), "cudaStreamWaitEvent", r.peer, r.tag);
  const int src_dev = world_.device_of(m.src);
  if (src_dev == device_) {
    cuda_check(cudaMemcpyAsync(r.dev, m.dev, m.bytes, cudaMemcpyDeviceToDevice, stream_), "cudaMemcpyAsync D2D", r.peer,
               r.tag);
  } else {
    cuda_check(cudaMemcpyPeerAsync(r.dev, device_, m.dev, src_dev, m.bytes, stream_), "cudaMemcpyPeerAsync", r.peer,
               r.tag);
  }
  cuda_check(cudaMemcpyAsync(r.buf.ptr, r.dev, m.bytes, cudaMemcpyDeviceToHost, stream_), "cudaMemcpyAsync D2H", r.peer,
             r.tag);
  r.copied = record(r.peer, r.tag);
  return true;
}

bool GpuFabric::finished(RequestState& s) {
  if (s.done) return true;
  auto* rs = dynamic_cast<RecvState*>(&s);
  auto* ss = dynamic_cast<SendState*>(&s);
  const std::shared_ptr<CudaEvent>& ev = rs ? rs->copied : ss->staged;
  const int peer = rs ? rs->peer : ss->peer;
  const Tag tag = rs ? rs->tag : ss->tag;
  const cudaError_t q = cudaEventQuery(ev->ev);
  if (q == cudaErrorNotReady) return false;
  cuda_check(q, "cudaEventQuery", peer, tag);
  if (rs) {
    world_.pools_[rs->msg.src]->release(rs->msg.dev, rs->msg.cls);
    world_.pools_[rank_]->release(rs->dev, rs->cls);
    rs->msg.dev = rs->dev = nullptr;
  }
  s.done = true;
  return true;
}

void GpuFabric::wait_all(std::span<Request> reqs, Deadline d) {
  // As emu: the caller's deadline expiring is the caller's business; the world's own limit means a hang and
  // fails the whole run.
  const double world_limit = now() + world_.timeout_s_;
  const bool caller_limit = d.at_s < world_limit;
  const double limit = caller_limit ? d.at_s : world_limit;
  for (;;) {
    bool all_done = true, on_gpu = false;
    RequestState* waiting = nullptr;
    for (auto& req : reqs) {
      RequestState* s = req.state();
      if (!s || s->done) {
        if (s && !s->error.empty()) throw FabricError(s->error);
        continue;
      }
      auto* rs = dynamic_cast<RecvState*>(s);
      if (rs && !issue(*rs)) {
        all_done = false;
        if (!waiting) waiting = s;
        continue;
      }
      if (!s->error.empty()) throw FabricError(s->error);
      if (!finished(*s)) {
        all_done = false;
        on_gpu = true;
        if (!waiting) waiting = s;
      }
    }
    if (all_done) return;
    std::unique_lock<std::mutex> lock(world_.mu_);
    if (!world_.failure_.empty())
      throw FabricError("rank " + std::to_string(rank_) + " stopped waiting: " + world_.failure_);
    const double left = limit - now();
    if (left <= 0) {
      auto* rs = dynamic_cast<RecvState*>(waiting);
      auto* ss = dynamic_cast<SendState*>(waiting);
      const std::string msg = "wait: " + where(rs ? rs->peer : ss->peer, rs ? rs->tag : ss->tag) +
                              ": deadline passed (" +
                              (caller_limit ? std::string("the caller's") : std::to_string(world_.timeout_s_) + " s") +
                              (rs && !rs->matched ? ") with the message not yet received"
                                                  : ") with the message's GPU copies still running");
      if (!caller_limit && world_.failure_.empty()) world_.failure_ = msg;
      world_.cv_.notify_all();
      throw FabricError(msg);
    }
    // Copies in flight finish on their own, so poll them soon; unmatched receives wait for a sender's notify.
    const double nap = on_gpu ? 20e-6 : std::min(left, 0.5);
    world_.cv_.wait_for(lock, std::chrono::duration<double>(nap));
  }
}

void GpuFabric::barrier() {
  std::unique_lock<std::mutex> lock(world_.mu_);
  const long gen = world_.barrier_gen_;
  if (++world_.barrier_count_ == size()) {
    world_.barrier_count_ = 0;
    ++world_.barrier_gen_;
    world_.cv_.notify_all();
    return;
  }
  const auto limit = std::chrono::steady_clock::now() + std::chrono::duration<double>(world_.timeout_s_);
  while (world_.barrier_gen_ == gen && world_.failure_.empty()) {
    if (world_.cv_.wait_until(lock, limit) == std::cv_status::timeout && world_.barrier_gen_ == gen) {
      const std::string msg = "barrier: rank " + std::to_string(rank_) + " in phase " + phase_ + ": timed out after " +
                              std::to_string(world_.timeout_s_) + " s";
      if (world_.failure_.empty()) world_.failure_ = msg;
      world_.cv_.notify_all();
      throw FabricError(msg);
    }
  }
  if (world_.barrier_gen_ == gen)
    throw FabricError("rank " + std::to_string(rank_) + " left the barrier: " + world_.failure_);
}

class GpuBackend : public Backend {
 public:
  std::string name() const override { return "real"; }
  std::string description() const override {
    return "ranks as threads, every message staged host -> GPU -> GPU -> host with CUDA copies (rank r on device "
           "r % devices), wall clock";
  }
  // device_memory stays false: the engine hands the fabric host buffers, which are staged through the GPU.
  Caps caps() const override { return Caps{}; }
  void launch(const Topology& topo, const LaunchOptions& opts, const std::function<void(Fabric&)>& rank_main) override {
    if (opts.phantom_payload)
      throw EplabError("backend 'real' moves real bytes only; phantom payloads need --backend=sim");
    int devices = 0;
    const cudaError_t err = cudaGetDeviceCount(&devices);
    if (err != cudaSuccess || devices == 0) {
      cudaGetLastError();
      throw EplabError("backend 'real' found no CUDA device: " +
                       (err != cudaSuccess ? cuda_text(err) : std::string("cudaGetDeviceCount reports 0")) +
                       "; use --backend=emu for real bytes without a GPU");
    }
    GpuWorld world(topo, opts.timeout_s, devices);
    std::vector<std::exception_ptr> errors(topo.size());
    std::vector<std::thread> threads;
    threads.reserve(topo.size());
    for (int r = 0; r < topo.size(); ++r)
      threads.emplace_back([&, r] {
        run_rank(
            r,
            [&] {
              GpuFabric f(world, r);
              rank_main(f);
            },
            errors[r], [&](const std::string& why) { world.abort(why); });
      });
    for (auto& t : threads) t.join();
    rethrow_first_rank_error(errors);
  }
};

}  // namespace

std::unique_ptr<Backend> make_gpu_backend() { return std::make_unique<GpuBackend>(); }

}  // namespace eplab
