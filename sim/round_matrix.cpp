#include "sim/round_matrix.hpp"

#include <algorithm>
#include <cmath>
#include <cstddef>
#include <utility>

namespace eplab::sim {
namespace {

struct Mass {
  int id;
  double left;
};

struct Entry {
  int src, dst;
  double bytes;
};

// A transportation plan from rows to columns with the given sums over allowed pairs only: the north-west corner
// rule, where a column the current row may not use is swapped with the next one it may. The columns start half
// way round, so a row meets columns far from its own (another node, another group) first. When a row's last
// bytes can only go to columns it may not use, an earlier entry (a, b) lends them: y bytes of it go to (a, c)
// instead and the row takes (row, b), which keeps every sum. Returns false if even that finds nothing (the
// caller keeps the class as it was).
template <class Allowed>
bool plan(std::vector<Mass>& rows, std::vector<Mass>& cols, Allowed allowed, std::vector<Entry>& out) {
  const size_t first = out.size();
  std::rotate(cols.begin(), cols.begin() + static_cast<std::ptrdiff_t>(cols.size() / 2), cols.end());
  size_t j = 0;
  for (const Mass& r : rows) {
    double left = r.left;
    while (left > 0) {
      if (j == cols.size()) return false;  // unreachable while the sums agree
      size_t k = j;
      while (k < cols.size() && !allowed(r.id, cols[k].id)) ++k;
      if (k < cols.size()) {
        std::swap(cols[j], cols[k]);
        const double x = std::min(left, cols[j].left);
        out.push_back({r.id, cols[j].id, x});
        left -= x;
        cols[j].left -= x;
        if (cols[j].left == 0) ++j;
        continue;
      }
      // Every column with bytes left is forbidden to this row: borrow from earlier entries.
      Mass& c = cols[j];
      for (size_t e = out.size(); e-- > first && left > 0 && c.left > 0;) {
        const Entry lend = out[e];
        if (lend.bytes <= 0 || !allowed(r.id, lend.dst) || !allowed(lend.src, c.id)) continue;
        const double y = std::min({left, c.left, lend.bytes});
        out[e].bytes -= y;
        out.push_back({lend.src, c.id, y});
        out.push_back({r.id, lend.dst, y});
        left -= y;
        c.left -= y;
      }
      if (c.left == 0)
        ++j;
      else if (left > 0)
        return false;
    }
  }
  return true;
}

}  // namespace

void reduce_round_matrix(const Topology& topo, std::vector<double>& bytes, RoundMatrixStats* stats) {
  const int R = topo.size();
  const bool rail = topo.spec().scaleout == ScaleOutKind::kRailOptimized;
  std::vector<int> node(R), group(R);
  for (int r = 0; r < R; ++r) {
    node[r] = topo.node_of(r);
    group[r] = rail ? topo.local_of(r) : topo.node_of(r);
  }
  // Route class of a pair: 0 inside a node, 1 between nodes of one group, 2 between groups.
  const auto cls = [&](int a, int b) { return node[a] == node[b] ? 0 : group[a] == group[b] ? 1 : 2; };
  // Row and column sums per class; the classes of pairs inside a node are one per node (a node's scale-up links
  // carry only its own pairs), the other two span the cluster.
  std::vector<double> row[3], col[3];
  for (auto& v : row) v.assign(R, 0.0);
  for (auto& v : col) v.assign(R, 0.0);
  // Non-zero pairs per unit a plan replaces (each node's class 0, each group's class 1, class 2): a sparse
  // unit can have fewer pairs than its plan, and then stays as it is.
  std::vector<long> pairs0(topo.nodes(), 0), pairs1(rail ? topo.gpus_per_node() : 0, 0);
  long pairs2 = 0;
  double total = 0;
  long pairs_in = 0;
  for (int a = 0; a < R; ++a) {
    const double* line = bytes.data() + static_cast<size_t>(a) * R;
    for (int b = 0; b < R; ++b) {
      const double x = line[b];
      if (x == 0 || a == b) continue;
      if (!(x > 0) || x != std::floor(x)) return;  // not whole byte counts: the sums might not be exact
      total += x;
      ++pairs_in;
      const int c = cls(a, b);
      row[c][a] += x;
      col[c][b] += x;
      if (c == 0)
        ++pairs0[node[a]];
      else if (c == 1)
        ++pairs1[group[a]];
      else
        ++pairs2;
    }
  }
  if (!(total < 0x1p52)) return;

  std::vector<Entry> entries;
  std::vector<Mass> rows, cols;
  std::vector<char> node_done(topo.nodes(), 0);  // class 0, per node
  int stuck = 0;
  const auto gather = [&](int c, int first, int last, int step) {
    rows.clear();
    cols.clear();
    for (int r = first; r < last; r += step) {
      if (row[c][r] > 0) rows.push_back({r, row[c][r]});
      if (col[c][r] > 0) cols.push_back({r, col[c][r]});
    }
  };
  // Plans a unit; false (and nothing added) when the plan gets stuck or has more pairs than the unit.
  const auto attempt = [&](long pairs, auto allowed) {
    const size_t mark = entries.size();
    if (plan(rows, cols, allowed, entries)) {
      const long n = std::count_if(entries.begin() + static_cast<std::ptrdiff_t>(mark), entries.end(),
                                   [](const Entry& e) { return e.bytes > 0; });
      if (n < pairs) return true;
    } else {
      ++stuck;
    }
    entries.resize(mark);
    return false;
  };
  const int G = topo.gpus_per_node();
  for (int n = 0; n < topo.nodes(); ++n) {
    gather(0, n * G, (n + 1) * G, 1);
    node_done[n] = attempt(pairs0[n], [](int a, int b) { return a != b; });
  }
  // Between nodes of one group: per group (a rail's GPUs, one per node); a fat-tree's groups are nodes, so the
  // class is empty there.
  std::vector<char> group_done(pairs1.size(), 0);
  for (int g = 0; g < static_cast<int>(pairs1.size()); ++g) {
    gather(1, g, R, G);
    group_done[g] = attempt(pairs1[g], [&](int a, int b) { return node[a] != node[b]; });
  }
  gather(2, 0, R, 1);
  const bool done2 = attempt(pairs2, [&](int a, int b) { return node[a] != node[b] && group[a] != group[b]; });

  // Clear the pairs of every class that has a plan, then write the plans.
  for (int a = 0; a < R; ++a) {
    double* line = bytes.data() + static_cast<size_t>(a) * R;
    for (int b = 0; b < R; ++b) {
      if (a == b || line[b] == 0) continue;
      const int c = cls(a, b);
      if (c == 0 ? node_done[node[a]] : c == 1 ? group_done[group[a]] : done2) line[b] = 0;
    }
  }
  for (const Entry& e : entries) bytes[static_cast<size_t>(e.src) * R + e.dst] += e.bytes;
  if (stats) {
    long out = 0;
    for (int a = 0; a < R; ++a)
      for (int b = 0; b < R; ++b) out += a != b && bytes[static_cast<size_t>(a) * R + b] > 0;
    stats->pairs_in = pairs_in;
    stats->pairs_out = out;
    stats->stuck = stuck;
  }
}

}  // namespace eplab::sim
