#include "verbs/verbs_device.hpp"

#include <arpa/inet.h>
#include <infiniband/verbs.h>

#include <cstring>

#include "engine/error.hpp"

namespace eplab::verbs {
namespace {

constexpr uint64_t kCreditBit = 1ull << 63;  // wr_id of a credit send

std::string errno_text(const char* what) { return std::string(what) + " failed: " + std::strerror(errno); }

}  // namespace

std::vector<std::string> device_names() {
  int n = 0;
  ibv_device** list = ibv_get_device_list(&n);
  std::vector<std::string> out;
  if (!list) return out;
  for (int i = 0; i < n; ++i) out.emplace_back(ibv_get_device_name(list[i]));
  ibv_free_device_list(list);
  return out;
}

Device::Device(const std::string& name, int port, int cq_depth) : port_(port) {
  int n = 0;
  ibv_device** list = ibv_get_device_list(&n);
  if (!list || n == 0) {
    if (list) ibv_free_device_list(list);
    throw FabricError(
        "verbs: no RDMA device found (libibverbs lists none). The verbs transport needs an InfiniBand or RoCE NIC "
        "with its driver loaded (ibv_devices lists it), or soft-RoCE over an Ethernet interface (`rdma link add rxe0 "
        "type rxe netdev IFACE`); without one, --backend=mpi with its default transport (mpi), emu or sim run "
        "the same workload");
  }
  ibv_device* dev = nullptr;
  std::string names;
  for (int i = 0; i < n; ++i) {
    const std::string d = ibv_get_device_name(list[i]);
    names += (i ? ", " : "") + d;
    if (!dev && (name.empty() || name == d)) dev = list[i];
  }
  if (!dev) {
    ibv_free_device_list(list);
    throw FabricError("verbs: no RDMA device '" + name + "' (devices: " + names + ")");
  }
  name_ = ibv_get_device_name(dev);
  ctx_ = ibv_open_device(dev);
  ibv_free_device_list(list);
  if (!ctx_) throw FabricError("verbs: " + errno_text(("ibv_open_device(" + name_ + ")").c_str()));
  pd_ = ibv_alloc_pd(ctx_);
  if (!pd_) throw FabricError("verbs: " + errno_text("ibv_alloc_pd"));
  cq_ = ibv_create_cq(ctx_, cq_depth, nullptr, nullptr, 0);
  if (!cq_) throw FabricError("verbs: " + errno_text("ibv_create_cq"));
  ibv_port_attr pa{};
  if (ibv_query_port(ctx_, static_cast<uint8_t>(port_), &pa))
    throw FabricError("verbs: " + errno_text(("ibv_query_port(" + name_ + ")").c_str()));
  if (pa.state != IBV_PORT_ACTIVE)
    throw FabricError("verbs: port " + std::to_string(port_) + " of " + name_ + " is not active");
  lid_ = pa.lid;
}

Device::~Device() {
  for (Qp& q : qps_) ibv_destroy_qp(q.qp);
  if (cq_) ibv_destroy_cq(cq_);
  if (pd_) ibv_dealloc_pd(pd_);
  if (ctx_) ibv_close_device(ctx_);
}

Registered Device::register_memory(void* addr, size_t bytes) {
  ibv_mr* mr = ibv_reg_mr(pd_, addr, bytes, IBV_ACCESS_LOCAL_WRITE | IBV_ACCESS_REMOTE_WRITE);
  if (!mr) throw FabricError("verbs: " + errno_text(("ibv_reg_mr of " + std::to_string(bytes) + " bytes").c_str()));
  return {mr, static_cast<uint8_t*>(addr), bytes, mr->lkey, mr->rkey};
}

void Device::deregister(Registered& r) {
  if (r.mr) ibv_dereg_mr(r.mr);
  r = {};
}

void Device::post_recv(ibv_qp* qp) {
  ibv_recv_wr wr{};
  ibv_recv_wr* bad = nullptr;
  wr.wr_id = qp->qp_num;
  if (ibv_post_recv(qp, &wr, &bad)) throw FabricError("verbs: " + errno_text("ibv_post_recv"));
}

int Device::create_qp(int peer) {
  ibv_qp_init_attr init{};
  init.send_cq = cq_;
  init.recv_cq = cq_;
  init.qp_type = IBV_QPT_RC;
  init.cap.max_send_wr = 1024;
  init.cap.max_recv_wr = kRecvDepth;
  init.cap.max_send_sge = 1;
  init.cap.max_recv_sge = 1;
  ibv_qp* qp = ibv_create_qp(pd_, &init);
  if (!qp) throw FabricError("verbs: " + errno_text(("ibv_create_qp for rank " + std::to_string(peer)).c_str()));
  qps_.push_back({qp, peer});
  ibv_qp_attr a{};
  a.qp_state = IBV_QPS_INIT;
  a.pkey_index = 0;
  a.port_num = static_cast<uint8_t>(port_);
  a.qp_access_flags = IBV_ACCESS_REMOTE_WRITE;
  if (ibv_modify_qp(qp, &a, IBV_QP_STATE | IBV_QP_PKEY_INDEX | IBV_QP_PORT | IBV_QP_ACCESS_FLAGS))
    throw FabricError("verbs: " + errno_text("ibv_modify_qp to INIT"));
  for (int i = 0; i < kRecvDepth; ++i) post_recv(qp);
  return static_cast<int>(qps_.size()) - 1;
}

Endpoint Device::local_endpoint(int qp, const Registered& ring) const {
  Endpoint e;
  e.qp_num = qps_.at(qp).qp->qp_num;
  e.lid = lid_;
  ibv_gid gid{};
  if (ibv_query_gid(ctx_, static_cast<uint8_t>(port_), 0, &gid) == 0) std::memcpy(e.gid, gid.raw, sizeof e.gid);
  e.rkey = ring.rkey;
  e.ring_addr = reinterpret_cast<uint64_t>(ring.addr);
  return e;
}

void Device::connect(int handle, const Endpoint& remote) {
  ibv_qp* qp = qps_.at(handle).qp;
  ibv_qp_attr a{};
  a.qp_state = IBV_QPS_RTR;
  a.path_mtu = IBV_MTU_4096;
  a.dest_qp_num = remote.qp_num;
  a.rq_psn = 0;
  a.max_dest_rd_atomic = 1;
  a.min_rnr_timer = 12;
  a.ah_attr.dlid = remote.lid;
  a.ah_attr.port_num = static_cast<uint8_t>(port_);
  if (remote.lid == 0) {  // RoCE: addressed by GID
    a.ah_attr.is_global = 1;
    std::memcpy(a.ah_attr.grh.dgid.raw, remote.gid, sizeof remote.gid);
    a.ah_attr.grh.hop_limit = 1;
    a.ah_attr.grh.sgid_index = 0;
  }
  if (ibv_modify_qp(qp, &a,
                    IBV_QP_STATE | IBV_QP_AV | IBV_QP_PATH_MTU | IBV_QP_DEST_QPN | IBV_QP_RQ_PSN |
                        IBV_QP_MAX_DEST_RD_ATOMIC | IBV_QP_MIN_RNR_TIMER))
    throw FabricError("verbs: " + errno_text("ibv_modify_qp to RTR"));
  a = {};
  a.qp_state = IBV_QPS_RTS;
  a.timeout = 14;
  a.retry_cnt = 7;
  a.rnr_retry = 7;
  a.sq_psn = 0;
  a.max_rd_atomic = 1;
  if (ibv_modify_qp(qp, &a,
                    IBV_QP_STATE | IBV_QP_TIMEOUT | IBV_QP_RETRY_CNT | IBV_QP_RNR_RETRY | IBV_QP_SQ_PSN |
                        IBV_QP_MAX_QP_RD_ATOMIC))
    throw FabricError("verbs: " + errno_text("ibv_modify_qp to RTS"));
}

void Device::post_write(int handle, const WriteOp& w, uint32_t lkey, const Endpoint& remote, uint32_t slot_bytes) {
  ibv_sge sge{reinterpret_cast<uint64_t>(w.local), w.bytes, lkey};
  ibv_send_wr wr{};
  ibv_send_wr* bad = nullptr;
  wr.wr_id = w.wr_id;
  wr.sg_list = &sge;
  wr.num_sge = 1;
  wr.opcode = IBV_WR_RDMA_WRITE_WITH_IMM;
  wr.send_flags = IBV_SEND_SIGNALED;
  wr.imm_data = htonl(w.imm);
  wr.wr.rdma.remote_addr = remote.ring_addr + static_cast<uint64_t>(w.slot) * slot_bytes;
  wr.wr.rdma.rkey = remote.rkey;
  if (ibv_post_send(qps_.at(handle).qp, &wr, &bad)) throw FabricError("verbs: " + errno_text("ibv_post_send (write)"));
}

void Device::post_credit(int handle, uint32_t credits) {
  ibv_send_wr wr{};
  ibv_send_wr* bad = nullptr;
  wr.wr_id = kCreditBit | credits;
  wr.num_sge = 0;
  wr.opcode = IBV_WR_SEND_WITH_IMM;
  wr.send_flags = IBV_SEND_SIGNALED;
  wr.imm_data = htonl(credits);
  if (ibv_post_send(qps_.at(handle).qp, &wr, &bad)) throw FabricError("verbs: " + errno_text("ibv_post_send (credit)"));
}

void Device::poll(std::vector<Completion>& out) {
  ibv_wc wc[64];
  const int n = ibv_poll_cq(cq_, 64, wc);
  if (n < 0) throw FabricError("verbs: ibv_poll_cq failed");
  for (int i = 0; i < n; ++i) {
    int q = -1;
    for (size_t j = 0; j < qps_.size(); ++j)
      if (qps_[j].qp->qp_num == wc[i].qp_num) q = static_cast<int>(j);
    const int peer = q >= 0 ? qps_[q].peer : -1;
    if (wc[i].status != IBV_WC_SUCCESS)
      throw FabricError("verbs: completion from rank " + std::to_string(peer) +
                        " failed: " + ibv_wc_status_str(wc[i].status));
    switch (wc[i].opcode) {
      case IBV_WC_RDMA_WRITE:
        out.push_back({Completion::kWriteDone, peer, wc[i].wr_id, 0, 0});
        break;
      case IBV_WC_SEND:  // a credit message left; nothing waits for it
        break;
      case IBV_WC_RECV_RDMA_WITH_IMM:
        out.push_back({Completion::kWriteImm, peer, 0, ntohl(wc[i].imm_data), wc[i].byte_len});
        post_recv(qps_[q].qp);
        break;
      case IBV_WC_RECV:
        out.push_back({Completion::kCredit, peer, 0, ntohl(wc[i].imm_data), 0});
        post_recv(qps_[q].qp);
        break;
      default:
        throw FabricError("verbs: unexpected completion opcode " + std::to_string(wc[i].opcode) + " from rank " +
                          std::to_string(peer));
    }
  }
}

}  // namespace eplab::verbs
