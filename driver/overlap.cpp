#include "driver/overlap.hpp"

#include <algorithm>
#include <numeric>

#include "engine/error.hpp"

namespace eplab {
namespace {

// The two-stream (or, for the serial baseline, one-stream) schedule of one step's ops on every rank.
struct Schedule {
  std::vector<std::vector<double>> ready, start, end;  // [op][rank]
  double makespan = 0;
};

struct Proto {
  OpKind kind;
  int mb;
  std::vector<int> deps;
  int stream;
  double key;  // order on its stream
};

std::vector<Proto> protos(const std::vector<const OverlapOp*>& ops, bool two_streams) {
  std::vector<Proto> p;
  int last[2] = {-1, -1}, n[2] = {0, 0};
  for (size_t i = 0; i < ops.size(); ++i) {
    const auto kind = static_cast<OpKind>(ops[i]->kind);
    const int mb = ops[i]->micro_batch;
    Proto q{kind, mb, {}, two_streams && is_comm(kind) ? 1 : 0, static_cast<double>(i)};
    if (mb == 0 || mb == 1) {
      if (last[mb] >= 0) q.deps.push_back(last[mb]);
      last[mb] = static_cast<int>(i);
      if (two_streams) q.key = n[mb]++;
    } else {
      for (int m : {0, 1})
        if (last[m] >= 0) q.deps.push_back(last[m]);
      const int k = std::max(n[0], n[1]);
      if (kind == OpKind::kMigration) {
        // A join: after everything before it, before everything after it.
        last[0] = last[1] = static_cast<int>(i);
        if (two_streams) q.key = k - 0.5;
        n[0] = n[1] = k;
      } else if (two_streams) {
        // After both micro-batches' next op: on the communication stream that is the next layer's first
        // exchanges, so the all-reduce runs under that layer's compute instead of delaying its exchanges.
        q.key = k + 0.5;
      }
    }
    p.push_back(std::move(q));
  }
  return p;
}

Schedule schedule(const std::vector<Proto>& p, const std::vector<std::vector<double>>& dur, int R) {
  const size_t N = p.size();
  Schedule s;
  s.ready.assign(N, std::vector<double>(R, 0.0));
  s.start = s.ready;
  s.end = s.ready;
  std::vector<std::vector<size_t>> order(2);
  for (size_t i = 0; i < N; ++i) order[p[i].stream].push_back(i);
  for (auto& o : order) std::stable_sort(o.begin(), o.end(), [&](size_t a, size_t b) { return p[a].key < p[b].key; });
  std::vector<std::vector<double>> free(2, std::vector<double>(R, 0.0));
  std::vector<char> done(N, 0);
  size_t head[2] = {0, 0}, finished = 0;
  while (finished < N) {
    bool progressed = false;
    for (int st = 0; st < 2; ++st) {
      if (head[st] == order[st].size()) continue;
      const size_t i = order[st][head[st]];
      if (!std::all_of(p[i].deps.begin(), p[i].deps.end(), [&](int d) { return done[d] != 0; })) continue;
      double common = 0;
      for (int r = 0; r < R; ++r) {
        double ready = free[st][r];
        for (int d : p[i].deps) ready = std::max(ready, s.end[d][r]);
        s.ready[i][r] = ready;
        common = std::max(common, ready);
      }
      const bool comm = is_comm(p[i].kind);
      for (int r = 0; r < R; ++r) {
        // An exchange starts on every rank when the last is ready for it; compute starts when this rank is.
        s.start[i][r] = comm ? common : s.ready[i][r];
        s.end[i][r] = s.start[i][r] + dur[i][r];
        free[st][r] = s.end[i][r];
        s.makespan = std::max(s.makespan, s.end[i][r]);
      }
      done[i] = 1;
      ++head[st];
      ++finished;
      progressed = true;
    }
    if (!progressed)
      throw EplabError("two-batch overlap: the ops of a step cannot be ordered on two streams (op " +
                       std::to_string(order[0].size() > head[0] ? order[0][head[0]] : order[1][head[1]]) +
                       " waits for an op queued behind it)");
  }
  return s;
}

// Total length of the parts of `a` that `b` covers; both lists hold disjoint intervals.
double covered(std::vector<std::pair<double, double>> a, std::vector<std::pair<double, double>> b) {
  std::sort(a.begin(), a.end());
  std::sort(b.begin(), b.end());
  double sum = 0;
  size_t j = 0;
  for (auto [a0, a1] : a) {
    while (j < b.size() && b[j].second <= a0) ++j;
    for (size_t k = j; k < b.size() && b[k].first < a1; ++k)
      sum += std::max(0.0, std::min(a1, b[k].second) - std::max(a0, b[k].first));
  }
  return sum;
}

struct RankFigures {
  double end = 0, compute = 0, comm = 0, hidden = 0;
};

// One rank's figures; `exposed_by_op` (when given) gets each communication op's exposed part.
RankFigures figures(const std::vector<Proto>& p, const Schedule& s, int r, std::vector<double>* exposed_by_op) {
  RankFigures f;
  std::vector<std::pair<double, double>> compute, comm;
  for (size_t i = 0; i < p.size(); ++i) {
    f.end = std::max(f.end, s.end[i][r]);
    if (is_comm(p[i].kind)) {
      // The stream is taken from the moment the rank is ready to exchange: waiting for peers is communication.
      comm.push_back({s.ready[i][r], s.end[i][r]});
      f.comm += s.end[i][r] - s.ready[i][r];
    } else {
      compute.push_back({s.start[i][r], s.end[i][r]});
      f.compute += s.end[i][r] - s.start[i][r];
    }
  }
  f.hidden = covered(comm, compute);
  if (exposed_by_op) {
    exposed_by_op->assign(p.size(), 0.0);
    for (size_t i = 0; i < p.size(); ++i)
      if (is_comm(p[i].kind))
        (*exposed_by_op)[i] = s.end[i][r] - s.ready[i][r] - covered({{s.ready[i][r], s.end[i][r]}}, compute);
  }
  return f;
}

int critical_rank(const std::vector<RankFigures>& f) {
  int best = 0;
  for (int r = 1; r < static_cast<int>(f.size()); ++r)
    if (f[r].end > f[best].end || (f[r].end == f[best].end && f[r].compute > f[best].compute)) best = r;
  return best;
}

}  // namespace

const char* op_name(OpKind k) {
  switch (k) {
    case OpKind::kDense:
      return "dense";
    case OpKind::kDispatch:
      return "dispatch";
    case OpKind::kExpert:
      return "expert";
    case OpKind::kCombine:
      return "combine";
    case OpKind::kBwdDispatch:
      return "bwd-dispatch";
    case OpKind::kBwdExpert:
      return "bwd-expert";
    case OpKind::kBwdCombine:
      return "bwd-combine";
    case OpKind::kBwdDense:
      return "bwd-dense";
    case OpKind::kAllreduce:
      return "allreduce";
    case OpKind::kMigration:
      return "migration";
  }
  return "?";
}

bool is_comm(OpKind k) {
  return k == OpKind::kDispatch || k == OpKind::kCombine || k == OpKind::kBwdDispatch || k == OpKind::kBwdCombine ||
         k == OpKind::kAllreduce || k == OpKind::kMigration;
}

OverlapResult compose_two_batch(const std::vector<std::vector<OverlapOp>>& ops,
                                const std::function<bool(int)>& record_spans) {
  OverlapResult out;
  const int R = static_cast<int>(ops.size());
  if (R == 0) return out;
  for (int r = 1; r < R; ++r) {
    auto same = [](const OverlapOp& a, const OverlapOp& b) {
      return a.step == b.step && a.kind == b.kind && a.micro_batch == b.micro_batch && a.layer == b.layer;
    };
    const size_t n = std::min(ops[r].size(), ops[0].size());
    size_t i = 0;
    while (i < n && same(ops[r][i], ops[0][i])) ++i;
    if (i < n || ops[r].size() != ops[0].size())
      throw EplabError("two-batch overlap: rank " + std::to_string(r) +
                       " ran a different sequence of phases than rank 0 (op " + std::to_string(i) + " of " +
                       std::to_string(ops[0].size()) + ")");
  }
  for (const OverlapOp& o : ops[0])
    if (o.kind < 0 || o.kind > static_cast<int32_t>(OpKind::kMigration) || o.micro_batch < -1 || o.micro_batch > 1)
      throw EplabError("two-batch overlap: op of step " + std::to_string(o.step) + " has kind " +
                       std::to_string(o.kind) + " and micro-batch " + std::to_string(o.micro_batch));
  double base = ops[0].empty() ? 0.0 : ops[0][0].t0;
  for (size_t b = 0; b < ops[0].size();) {
    size_t e = b;
    while (e < ops[0].size() && ops[0][e].step == ops[0][b].step) ++e;
    std::vector<const OverlapOp*> step_ops;
    for (size_t i = b; i < e; ++i) step_ops.push_back(&ops[0][i]);
    std::vector<std::vector<double>> dur(e - b, std::vector<double>(R));
    for (size_t i = b; i < e; ++i)
      for (int r = 0; r < R; ++r) dur[i - b][r] = std::max(0.0, ops[r][i].dur);

    StepOverlap st;
    const auto p2 = protos(step_ops, true), p1 = protos(step_ops, false);
    const Schedule s2 = schedule(p2, dur, R), s1 = schedule(p1, dur, R);
    std::vector<RankFigures> f2(R), f1(R);
    for (int r = 0; r < R; ++r) f2[r] = figures(p2, s2, r, nullptr), f1[r] = figures(p1, s1, r, nullptr);
    const int c2 = critical_rank(f2), c1 = critical_rank(f1);
    std::vector<double> by_op;
    figures(p2, s2, c2, &by_op);
    st.step_s = s2.makespan;
    st.compute_s = f2[c2].compute;
    st.comm_s = f2[c2].comm;
    st.hidden_s = f2[c2].hidden;
    st.exposed_s = st.comm_s - st.hidden_s;
    st.serial_step_s = s1.makespan;
    st.serial_compute_s = f1[c1].compute;
    st.critical_rank = c2;
    for (size_t i = 0; i < p2.size(); ++i) {
      if (!is_comm(p2[i].kind)) continue;
      const std::string name = op_name(p2[i].kind);
      auto it = std::find_if(st.exposed_by_phase.begin(), st.exposed_by_phase.end(),
                             [&](const auto& x) { return x.first == name; });
      if (it == st.exposed_by_phase.end())
        st.exposed_by_phase.push_back({name, 0.0}), it = st.exposed_by_phase.end() - 1;
      it->second += by_op[i];
    }
    for (size_t i = 0; i < p2.size(); ++i) {
      const OverlapOp& o = *step_ops[i];
      const int lane = o.micro_batch < 0 ? 2 : o.micro_batch;
      if (record_spans)
        for (int r = 0; r < R; ++r)
          if (record_spans(r))
            out.spans.push_back({r, op_name(p2[i].kind), base + s2.start[i][r], base + s2.end[i][r], lane});
      if (is_comm(p2[i].kind)) {
        const double sim_t1 = o.t0 + *std::max_element(dur[i].begin(), dur[i].end());
        out.shifts.push_back({o.t0, sim_t1, base + s2.start[i][0] - o.t0});
      }
    }
    base += st.step_s;
    out.steps.push_back(std::move(st));
    b = e;
  }
  return out;
}

}  // namespace eplab
