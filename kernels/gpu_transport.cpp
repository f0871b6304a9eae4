// The `real` backend's transport. Matching, deadlines and failure release are the core's
// (engine/transport_fabric.hpp); every message travels through GPU memory: H2D into a device buffer of the
// sender on the sender's stream, then D2D (or peer copy) into a device buffer of the receiver and D2H into the
// receive buffer on the receiver's stream, ordered by a CUDA event and completed by another. The engine's own
// buffers stay in host memory (docs/gpu.md).
#include <cuda_runtime_api.h>

#include <algorithm>
#include <bit>
#include <map>
#include <mutex>

#include "engine/transport_fabric.hpp"
#include "kernels/gpu_backend.hpp"
#include "kernels/nccl_plan.hpp"
#ifdef EPLAB_HAVE_NCCL
#include "kernels/nccl_backend.hpp"
#endif
#ifdef EPLAB_HAVE_CUDA_IPC
#include "kernels/ipc_backend.hpp"
#endif

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

// One rank's device buffers, reused by size class (nccl::staging_class, as the process transports' are): a
// cudaFree per message would synchronize the whole device. Only the owning rank's thread acquires (its device is
// current); any thread releases.
class DevicePool {
 public:
  explicit DevicePool(int device) : device_(device) {}
  ~DevicePool() {
    cudaSetDevice(device_);
    for (void* p : all_) cudaFree(p);
  }
  // Returns nullptr with *err set when cudaMalloc fails, so the caller can name rank, peer and tag.
  void* acquire(size_t bytes, size_t* cls, cudaError_t* err) {
    *cls = nccl::staging_class(bytes);
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

// A message staged in the sender's pool; the buffer goes back to the pool when the last reference is dropped,
// which the receiver does only once its copy out of it has finished.
struct Staged {
  DevicePool* pool = nullptr;
  void* dev = nullptr;
  size_t cls = 0;
  std::shared_ptr<CudaEvent> ready;  // the H2D into `dev` has finished
  ~Staged() {
    if (dev) pool->release(dev, cls);
  }
};

// A receive's copies in flight: into its own pool buffer, then to the host.
struct Copies {
  DevicePool* pool = nullptr;
  void* dev = nullptr;
  size_t cls = 0;
  std::shared_ptr<CudaEvent> done;
  ~Copies() {
    if (dev) pool->release(dev, cls);
  }
};

class GpuTransport final : public Transport {
 public:
  GpuTransport(Domain& domain, std::vector<std::unique_ptr<DevicePool>>& pools, int devices, int rank,
               const WallClock& clock)
      : domain_(domain), pools_(pools), devices_(devices), rank_(rank), device_(rank % devices), clock_(clock) {
    cudaError_t e = cudaSetDevice(device_);
    if (e == cudaSuccess) e = cudaStreamCreateWithFlags(&stream_, cudaStreamNonBlocking);
    if (e != cudaSuccess)
      throw FabricError("rank " + std::to_string(rank_) + ": cannot set up CUDA device " + std::to_string(device_) +
                        ": " + cuda_text(e));
  }
  ~GpuTransport() override {
    cudaStreamSynchronize(stream_);
    cudaStreamDestroy(stream_);
  }
  // Host memory only: the engine hands the transport host buffers, which it stages through the GPU.
  TransportCaps caps() const override { return TransportCaps{}; }
  double now() const override { return clock_(); }
  std::string endpoint() const override { return " (device " + std::to_string(device_) + ")"; }
  void post_send(SendOp& op, ConstBuf data) override;
  // The copies run on the receiver's stream, so they are issued by the receiver's own wait (test).
  void on_match(RecvOp& op, Arrival& a) override {
    op.msg = a;
    if (a.bytes == 0) op.done = true;
  }
  bool test(RequestState& s) override;
  void block(Domain& d, RequestState& pending, double until_s) override {
    // Copies in flight finish on their own, so poll them soon; unmatched receives wait for a sender's wake-up.
    const auto* r = dynamic_cast<const RecvOp*>(&pending);
    const bool on_gpu = !r || r->transfer;
    d.sync().wait(on_gpu ? std::min(until_s, now() + 20e-6) : until_s);
  }

 private:
  std::string where(int peer, Tag tag) const {
    return "rank " + std::to_string(rank_) + endpoint() + ", peer " + std::to_string(peer) + ", tag " +
           describe_tag(tag);
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
  // Whether the event has fired; throws on a CUDA error.
  bool fired(const CudaEvent& ev, int peer, Tag tag) const {
    const cudaError_t q = cudaEventQuery(ev.ev);
    if (q == cudaErrorNotReady) return false;
    cuda_check(q, "cudaEventQuery", peer, tag);
    return true;
  }
  void issue(RecvOp& r);

  Domain& domain_;
  std::vector<std::unique_ptr<DevicePool>>& pools_;
  int devices_;
  int rank_;
  int device_;
  const WallClock& clock_;
  cudaStream_t stream_ = nullptr;
};

void GpuTransport::post_send(SendOp& op, ConstBuf data) {
  auto staged = std::make_shared<Staged>();
  if (data.bytes > 0) {
    staged->pool = pools_[rank_].get();
    cudaError_t err = cudaSuccess;
    staged->dev = staged->pool->acquire(data.bytes, &staged->cls, &err);
    cuda_check(err, "cudaMalloc (send staging)", op.peer, op.tag);
    cuda_check(cudaMemcpyAsync(staged->dev, data.ptr, data.bytes, cudaMemcpyHostToDevice, stream_),
               "cudaMemcpyAsync H2D", op.peer, op.tag);
    staged->ready = record(op.peer, op.tag);
    op.transfer = staged->ready;
  }
  domain_.deliver(op.peer, *this, Arrival{rank_, op.tag, staged->dev, data.bytes, data.bytes, staged});
  if (data.bytes == 0) {
    SyncLock lock(domain_.sync());
    op.done = true;  // nothing to stage
  }
}

void GpuTransport::issue(RecvOp& r) {
  const Arrival& m = r.msg;
  const auto* staged = static_cast<const Staged*>(m.owner.get());
  auto copies = std::make_shared<Copies>();
  copies->pool = pools_[rank_].get();
  cudaError_t err = cudaSuccess;
  copies->dev = copies->pool->acquire(m.bytes, &copies->cls, &err);
  cuda_check(err, "cudaMalloc (receive staging)", r.peer, r.tag);
  cuda_check(cudaStreamWaitEvent(stream_, staged->ready->ev, 0), "cudaStreamWaitEvent", r.peer, r.tag);
  const int src_dev = m.src % devices_;
  if (src_dev == device_) {
    cuda_check(cudaMemcpyAsync(copies->dev, m.data, m.bytes, cudaMemcpyDeviceToDevice, stream_), "cudaMemcpyAsync D2D",
               r.peer, r.tag);
  } else {
    cuda_check(cudaMemcpyPeerAsync(copies->dev, device_, m.data, src_dev, m.bytes, stream_), "cudaMemcpyPeerAsync",
               r.peer, r.tag);
  }
  cuda_check(cudaMemcpyAsync(r.buf.ptr, copies->dev, m.bytes, cudaMemcpyDeviceToHost, stream_), "cudaMemcpyAsync D2H",
             r.peer, r.tag);
  copies->done = record(r.peer, r.tag);
  r.transfer = std::move(copies);
}

bool GpuTransport::test(RequestState& s) {
  if (s.done) return true;
  if (auto* r = dynamic_cast<RecvOp*>(&s)) {
    if (!r->matched) return false;
    if (!r->transfer) issue(*r);
    if (!fired(*static_cast<Copies*>(r->transfer.get())->done, r->peer, r->tag)) return false;
    r->transfer.reset();  // both staging buffers back to their pools
    r->msg = Arrival{};
  } else {
    auto& op = static_cast<SendOp&>(s);
    if (!fired(*static_cast<CudaEvent*>(op.transfer.get()), op.peer, op.tag)) return false;
    op.transfer.reset();
  }
  s.done = true;
  return true;
}

class StagedBackend : public Backend {
 public:
  std::string name() const override { return "real"; }
  std::string description() const override {
    return "ranks as threads, every message staged host -> GPU -> GPU -> host with CUDA copies (rank r on device "
           "r % devices), wall clock";
  }
  Caps caps() const override { return Caps{}; }
  std::string unavailable() const override {
    int devices = 0;
    const cudaError_t err = cudaGetDeviceCount(&devices);
    if (err == cudaSuccess && devices > 0) return {};
    cudaGetLastError();
    return "backend 'real' found no CUDA device: " +
           (err != cudaSuccess ? cuda_text(err) : std::string("cudaGetDeviceCount reports 0")) +
           "; use --backend=emu for real bytes without a GPU";
  }
  void launch(const Topology& topo, const LaunchOptions& opts, const std::function<void(Fabric&)>& rank_main) override {
    if (opts.phantom_payload)
      throw EplabError("backend 'real' moves real bytes only; phantom payloads need --backend=sim");
    if (const std::string why = unavailable(); !why.empty()) throw EplabError(why);
    int devices = 0;
    cudaGetDeviceCount(&devices);
    // The pools outlive the domain: messages nobody received still hold pool buffers when it goes.
    std::vector<std::unique_ptr<DevicePool>> pools;
    for (int r = 0; r < topo.size(); ++r) pools.push_back(std::make_unique<DevicePool>(r % devices));
    launch_thread_ranks(topo, opts.timeout_s, [&](Domain& domain, const WallClock& clock, int r) {
      GpuTransport t(domain, pools, devices, r, clock);
      TransportFabric f(domain, t, r, topo);
      rank_main(f);
    });
    // Let every copy finish before the pools free their buffers.
    for (int d = 0; d < std::min(devices, topo.size()); ++d) {
      cudaSetDevice(d);
      cudaDeviceSynchronize();
    }
  }
};

// `--backend=real`: the staged transport (ranks as threads, below), or one of ranks as processes that --transport
// picks (nccl: kernels/nccl_transport.cpp; cuda-ipc: kernels/ipc_transport.cpp).
class GpuBackend : public Backend {
 public:
  void use_transport(const std::string& transport) override {
#ifdef EPLAB_HAVE_NCCL
    constexpr bool kNcclBuilt = true;
#else
    constexpr bool kNcclBuilt = false;
#endif
#ifdef EPLAB_HAVE_CUDA_IPC
    constexpr bool kIpcBuilt = true;
#else
    constexpr bool kIpcBuilt = false;
#endif
    switch (nccl::parse_real_transport(transport, kNcclBuilt, kIpcBuilt)) {
      case nccl::RealTransport::kStaged:
        break;
      case nccl::RealTransport::kNccl:
#ifdef EPLAB_HAVE_NCCL
        impl_ = make_nccl_backend();
#endif
        break;
      case nccl::RealTransport::kCudaIpc:
#ifdef EPLAB_HAVE_CUDA_IPC
        impl_ = make_ipc_backend();
#endif
        break;
    }
  }
  std::string name() const override { return impl_->name(); }
  std::string description() const override { return impl_->description(); }
  Caps caps() const override { return impl_->caps(); }
  int fixed_world_size() const override { return impl_->fixed_world_size(); }
  std::string unavailable() const override { return impl_->unavailable(); }
  bool in_process() const override { return impl_->in_process(); }
  void launch(const Topology& topo, const LaunchOptions& opts, const std::function<void(Fabric&)>& rank_main) override {
    impl_->launch(topo, opts, rank_main);
  }

 private:
  std::unique_ptr<Backend> impl_ = std::make_unique<StagedBackend>();
};

}  // namespace

std::unique_ptr<Backend> make_gpu_backend() { return std::make_unique<GpuBackend>(); }

}  // namespace eplab
