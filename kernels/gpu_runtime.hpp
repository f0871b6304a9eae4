// A thin CUDA runtime wrapper for tests and benchmarks, which may not include CUDA headers: device query,
// a stream, device buffers and event timing. Every failure throws EplabError naming the call and the device.
#pragma once

#include <cstddef>
#include <cstdint>
#include <string>

#include "kernels/ops.hpp"

namespace eplab::kernels {

// Number of usable CUDA devices; 0 (never an exception) when there is no driver or no device, with the
// runtime's reason in *why.
int device_count(std::string* why = nullptr);
std::string device_name(int device);
void set_device(int device);

class Stream {
 public:
  Stream();
  ~Stream();
  Stream(const Stream&) = delete;
  Stream& operator=(const Stream&) = delete;
  GpuStream get() const { return stream_; }
  void sync() const;

 private:
  GpuStream stream_ = nullptr;
};

// Device memory that frees itself; copies are synchronous unless a stream is given.
class DeviceBuffer {
 public:
  DeviceBuffer() = default;
  explicit DeviceBuffer(size_t bytes);
  ~DeviceBuffer();
  DeviceBuffer(DeviceBuffer&& o) noexcept : ptr_(o.ptr_), bytes_(o.bytes_) { o.ptr_ = nullptr, o.bytes_ = 0; }
  DeviceBuffer& operator=(DeviceBuffer&& o) noexcept;
  DeviceBuffer(const DeviceBuffer&) = delete;
  DeviceBuffer& operator=(const DeviceBuffer&) = delete;

  void* get() const { return ptr_; }
  template <class T>
  T* as() const {
    return static_cast<T*>(ptr_);
  }
  size_t bytes() const { return bytes_; }
  void upload(const void* host, size_t bytes);
  void download(void* host, size_t bytes) const;
  void fill(int byte_value);

 private:
  void* ptr_ = nullptr;
  size_t bytes_ = 0;
};

// Device-to-device copy on a stream (asynchronous).
void copy_d2d(void* dst, const void* src, size_t bytes, GpuStream stream);

// Elapsed GPU time between two points on a stream, from a pair of CUDA events.
class EventTimer {
 public:
  explicit EventTimer(GpuStream stream);
  ~EventTimer();
  EventTimer(const EventTimer&) = delete;
  EventTimer& operator=(const EventTimer&) = delete;
  void start();
  // Records the stop event, waits for it and returns the seconds since start().
  double stop_s();

 private:
  GpuStream stream_;
  void* start_ = nullptr;
  void* stop_ = nullptr;
};

}  // namespace eplab::kernels
