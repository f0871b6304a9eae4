// The ibverbs half of the verbs transport (rdma-core): an RDMA device's protection domain and completion queue,
// registered memory, and reliable-connected queue pairs that post the RDMA WRITE WITH IMMEDIATE operations
// verbs/rdma_stream.* asks for and report their completions back. Built wherever libibverbs is; no machine this
// project has run on has an RDMA device, so this half is compiled and its refusal tested, not yet run on a NIC.
#pragma once

#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "verbs/rdma_stream.hpp"

struct ibv_context;
struct ibv_pd;
struct ibv_cq;
struct ibv_qp;
struct ibv_mr;

namespace eplab::verbs {

// RDMA devices libibverbs sees, by name (mlx5_0, rxe0, ...). Empty where there are none.
std::vector<std::string> device_names();

// A registered region: the local key for posting from it, the remote key and address a peer writes to.
struct Registered {
  ibv_mr* mr = nullptr;
  uint8_t* addr = nullptr;
  size_t bytes = 0;
  uint32_t lkey = 0, rkey = 0;
};

// What a peer needs to connect to one of our queue pairs and write into our ring (exchanged at bootstrap).
struct Endpoint {
  uint32_t qp_num = 0;
  uint16_t lid = 0;
  uint8_t gid[16] = {};
  uint32_t rkey = 0;
  uint64_t ring_addr = 0;
};

class Device {
 public:
  // Receives each queue pair keeps posted: every write with immediate and every credit message consumes one until
  // poll() posts it again, so a peer may have at most this many of them outstanding.
  static constexpr int kRecvDepth = 512;

  // Opens `name`, or the first device when empty, with a completion queue of `cq_depth` entries. Throws
  // FabricError when libibverbs lists no device (naming what to check: an InfiniBand/RoCE NIC and its driver, or
  // soft-RoCE via `rdma link add`), when `name` is not among them, or when the device cannot be opened.
  explicit Device(const std::string& name = "", int port = 1, int cq_depth = 4096);
  ~Device();
  Device(const Device&) = delete;
  Device& operator=(const Device&) = delete;

  const std::string& name() const { return name_; }
  Registered register_memory(void* addr, size_t bytes);
  void deregister(Registered& r);

  // One RC queue pair to `peer`, its receive queue primed for writes with immediate and credit messages.
  int create_qp(int peer);  // returns a handle
  Endpoint local_endpoint(int qp, const Registered& ring) const;
  void connect(int qp, const Endpoint& remote);  // INIT -> RTR -> RTS
  void post_write(int qp, const WriteOp& w, uint32_t lkey, const Endpoint& remote, uint32_t slot_bytes);
  void post_credit(int qp, uint32_t credits);  // a zero-byte send with the credits as immediate
  // Polls the completion queue; appends what completed.
  void poll(std::vector<Completion>& out);

 private:
  struct Qp {
    ibv_qp* qp;
    int peer;
  };
  void post_recv(ibv_qp* qp);
  std::string name_;
  int port_;
  ibv_context* ctx_ = nullptr;
  ibv_pd* pd_ = nullptr;
  ibv_cq* cq_ = nullptr;
  uint16_t lid_ = 0;
  std::vector<Qp> qps_;
};

}  // namespace eplab::verbs
