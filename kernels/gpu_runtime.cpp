// The runtime wrapper of gpu_runtime.hpp over the CUDA runtime API.
#include "kernels/gpu_runtime.hpp"

#include <cuda_runtime_api.h>

#include "engine/error.hpp"

namespace eplab::kernels {
namespace {

void check(cudaError_t err, const char* what) {
  if (err == cudaSuccess) return;
  int dev = -1;
  cudaGetDevice(&dev);
  throw EplabError(std::string(what) + " failed on device " + std::to_string(dev) + ": " + cudaGetErrorString(err));
}

}  // namespace

int device_count(std::string* why) {
  int n = 0;
  const cudaError_t err = cudaGetDeviceCount(&n);
  if (err != cudaSuccess) {
    if (why) *why = std::string(cudaGetErrorName(err)) + ": " + cudaGetErrorString(err);
    cudaGetLastError();  // clear it, so later calls do not report it again
    return 0;
  }
  if (n == 0 && why) *why = "cudaGetDeviceCount reports 0 devices";
  return n;
}

std::string device_name(int device) {
  cudaDeviceProp prop{};
  check(cudaGetDeviceProperties(&prop, device), "cudaGetDeviceProperties");
  return prop.name;
}

void set_device(int device) { check(cudaSetDevice(device), "cudaSetDevice"); }

Stream::Stream() {
  cudaStream_t s = nullptr;
  check(cudaStreamCreateWithFlags(&s, cudaStreamNonBlocking), "cudaStreamCreate");
  stream_ = s;
}
Stream::~Stream() {
  if (stream_) cudaStreamDestroy(stream_);
}
void Stream::sync() const { check(cudaStreamSynchronize(stream_), "cudaStreamSynchronize"); }

DeviceBuffer::DeviceBuffer(size_t bytes) : bytes_(bytes) {
  // A zero-byte buffer still gets a distinct valid pointer, so kernels may be handed it unconditionally.
  check(cudaMalloc(&ptr_, bytes ? bytes : 1), "cudaMalloc");
}
DeviceBuffer::~DeviceBuffer() {
  if (ptr_) cudaFree(ptr_);
}
DeviceBuffer& DeviceBuffer::operator=(DeviceBuffer&& o) noexcept {
  if (this != &o) {
    if (ptr_) cudaFree(ptr_);
    ptr_ = o.ptr_;
    bytes_ = o.bytes_;
    o.ptr_ = nullptr;
    o.bytes_ = 0;
  }
  return *this;
}
void DeviceBuffer::upload(const void* host, size_t bytes) {
  if (bytes > bytes_)
    throw EplabError("DeviceBuffer::upload: " + std::to_string(bytes) + " bytes into " + std::to_string(bytes_));
  if (bytes) check(cudaMemcpy(ptr_, host, bytes, cudaMemcpyHostToDevice), "cudaMemcpy H2D");
}
void DeviceBuffer::download(void* host, size_t bytes) const {
  if (bytes > bytes_)
    throw EplabError("DeviceBuffer::download: " + std::to_string(bytes) + " bytes from " + std::to_string(bytes_));
  if (bytes) check(cudaMemcpy(host, ptr_, bytes, cudaMemcpyDeviceToHost), "cudaMemcpy D2H");
}
void DeviceBuffer::fill(int byte_value) { check(cudaMemset(ptr_, byte_value, bytes_ ? bytes_ : 1), "cudaMemset"); }

void copy_d2d(void* dst, const void* src, size_t bytes, GpuStream stream) {
  check(cudaMemcpyAsync(dst, src, bytes, cudaMemcpyDeviceToDevice, stream), "cudaMemcpyAsync D2D");
}

EventTimer::EventTimer(GpuStream stream) : stream_(stream) {
  cudaEvent_t a = nullptr, b = nullptr;
  check(cudaEventCreate(&a), "cudaEventCreate");
  check(cudaEventCreate(&b), "cudaEventCreate");
  start_ = a;
  stop_ = b;
}
EventTimer::~EventTimer() {
  cudaEventDestroy(static_cast<cudaEvent_t>(start_));
  cudaEventDestroy(static_cast<cudaEvent_t>(stop_));
}
void EventTimer::start() { check(cudaEventRecord(static_cast<cudaEvent_t>(start_), stream_), "cudaEventRecord"); }
double EventTimer::stop_s() {
  check(cudaEventRecord(static_cast<cudaEvent_t>(stop_), stream_), "cudaEventRecord");
  check(cudaEventSynchronize(static_cast<cudaEvent_t>(stop_)), "cudaEventSynchronize");
  float ms = 0;
  check(cudaEventElapsedTime(&ms, static_cast<cudaEvent_t>(start_), static_cast<cudaEvent_t>(stop_)),
        "cudaEventElapsedTime");
  return ms * 1e-3;
}

}  // namespace eplab::kernels
