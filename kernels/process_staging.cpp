#include "kernels/process_staging.hpp"

#include <chrono>
#include <thread>

#include "kernels/nccl_plan.hpp"

namespace eplab::kernels {

StagingBuffer::~StagingBuffer() {
  if (ptr_) cudaFree(ptr_);
}

void* StagingBuffer::reserve(size_t bytes, cudaError_t* err, bool* grew) {
  if (grew) *grew = false;
  if (bytes <= bytes_ && ptr_) return ptr_;
  if (ptr_) cudaFree(ptr_);
  ptr_ = nullptr;
  bytes_ = 0;
  const size_t cls = nccl::staging_class(bytes);
  *err = cudaMalloc(&ptr_, cls);
  if (*err != cudaSuccess) return ptr_ = nullptr;
  bytes_ = cls;
  if (grew) *grew = true;
  return ptr_;
}

void wait_event(TransportFabric& f, cudaEvent_t ev, Deadline d, const std::string& what, bool* broken,
                const std::function<void()>& check) {
  bool caller = false;
  const double limit = f.limit_of(d, &caller);
  try {
    for (;;) {
      const cudaError_t q = cudaEventQuery(ev);
      if (q == cudaSuccess) return;
      if (q != cudaErrorNotReady) throw FabricError(what + ": cudaEventQuery: " + cuda_text(q));
      if (check) check();
      f.transport().progress();  // a peer's failure notice fails the domain
      std::string failure;
      {
        SyncLock lock(f.domain().sync());
        failure = f.domain().failure();
      }
      if (!failure.empty()) throw FabricError(what + ": released: " + failure);
      if (f.now() > limit) throw f.expired(what, " (GPU work still pending on the stream)", caller);
      std::this_thread::sleep_for(std::chrono::microseconds(20));
    }
  } catch (...) {
    *broken = true;
    throw;
  }
}

}  // namespace eplab::kernels
