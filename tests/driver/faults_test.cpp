// Injected faults (driver/faults.hpp): the spec grammar's accepted and refused inputs, the run-level checks, a
// failed GPU on sim with and without redundant experts (lost selections counted exactly, against a count made
// here from the routing and the placement), the same on emu with real bytes verified (hierarchical relaying a
// failed GPU's rail through a live GPU of its node, the same on sim), stragglers and stalls, and runs without
// --fault keeping their report free of fault keys.
#include "driver/faults.hpp"

#include <gtest/gtest.h>

#include <cstdio>

#include <set>
#include <string>
#include <vector>

#include "driver/experiment.hpp"
#include "driver/plan.hpp"
#include "driver/run_options.hpp"
#include "driver/rank_result.hpp"
#include "engine/backend.hpp"
#include "engine/placement.hpp"
#include "engine/topology.hpp"
#include "tests/engine/error_of.hpp"
#include "traces/routing_source.hpp"

namespace eplab {
namespace {

bool have_sim() { return backend_registry().find("sim") != nullptr; }

TEST(FaultSpecs, AcceptedSpecsParseToTheirFields) {
  FaultSpec g = parse_fault("gpu:5@step:2");
  EXPECT_EQ(g.kind, FaultKind::kGpu);
  EXPECT_EQ(g.rank, 5);
  EXPECT_EQ(g.step, 2);
  const FaultSpec n = parse_fault("nic:0@step:1");
  EXPECT_EQ(n.kind, FaultKind::kNic);
  const FaultSpec l = parse_fault("link:3@step:0,bw=12.5");
  EXPECT_EQ(l.kind, FaultKind::kLink);
  EXPECT_DOUBLE_EQ(l.bw_pct, 12.5);
  const FaultSpec s = parse_fault("straggler:2,x=1.5");
  EXPECT_EQ(s.kind, FaultKind::kStraggler);
  EXPECT_DOUBLE_EQ(s.slowdown, 1.5);
  EXPECT_EQ(s.step, -1);
  const FaultSpec st = parse_fault("stall:1@step:3,for=0.25");
  EXPECT_DOUBLE_EQ(st.stall_s, 0.25);
  EXPECT_EQ(st.step, 3);
  EXPECT_EQ(parse_fault("flap:4,period=2").period, 2);
  EXPECT_DOUBLE_EQ(parse_fault("gpu:0@t:0.5").at_s, 0.5);
}

TEST(FaultSpecs, RefusedSpecsNameTheSpecAndThePart) {
  const std::vector<std::pair<std::string, std::string>> cases = {
      {"", "no ':'"},
      {"gpu", "no ':'"},
      {"gpu:", "the rank"},
      {"gpu:5", "needs a trigger"},
      {"gpu:-1@step:2", "the rank"},
      {"gpu:4294967297@step:1", "the rank"},
      {"gpu:99999999999@step:1", "the rank"},
      {"gpu:5@step:1e3", "the step"},
      {"gpu:5@step:", "the step"},
      {"gpu:5@", "nothing after '@'"},
      {"gpu:5@when:3", "@step:S or @t:T"},
      {"gpu:1@t:-1", "the time"},
      {"gpu:1@t:nan", "the time"},
      {"gpu:1@step:1,x=2", "unknown parameter 'x'"},
      {"link:1@step:0", "needs bw="},
      {"link:1@step:0,bw=100", "(0, 100)"},
      {"link:1@step:0,bw=0", "(0, 100)"},
      {"link:1@step:0,bw=1e400", "finite"},
      {"straggler:1@step:2,x=2", "whole run"},
      {"straggler:1,x=nan", "finite"},
      {"straggler:1,x=inf", "finite"},
      {"straggler:1,x=0.5", "[1, 1e6]"},
      {"straggler:1,x=2,x=3", "given twice"},
      {"straggler:1,x", "not key=value"},
      {"stall:1@step:0,for=-1", "(0, 1e6]"},
      {"stall:1@step:0,for=0", "(0, 1e6]"},
      {"flap:1,period=0", "at least 1"},
      {"flap:1,period=2.5", "period"},
      {"disk:1@step:1", "unknown kind 'disk'"},
  };
  for (const auto& [spec, part] : cases) {
    const std::string e = error_of([&] { parse_fault(spec); });
    EXPECT_NE(e.find("fault '" + spec + "'"), std::string::npos) << spec << ": " << e;
    EXPECT_NE(e.find(part), std::string::npos) << spec << ": " << e;
  }
}

TEST(FaultSpecs, RunOptionIsRepeatableAndAListInConfigFiles) {
  RunConfig cfg = default_run_config();
  const RunOption* fault = nullptr;
  for (const RunOption& o : run_options())
    if (o.flag == "fault") fault = &o;
  ASSERT_NE(fault, nullptr);
  set_run_option_text(cfg, *fault, "gpu:1@step:0");
  set_run_option_text(cfg, *fault, "straggler:2,x=3");
  EXPECT_EQ(cfg.faults, (std::vector<std::string>{"gpu:1@step:0", "straggler:2,x=3"}));
  EXPECT_NE(error_of([&] { set_run_option_text(cfg, *fault, "gpu:1"); }).find("--fault: fault 'gpu:1'"),
            std::string::npos);
  RunConfig from_file = default_run_config();
  read_run_config(nlohmann::json::parse(R"({"faults": ["gpu:3@step:1", "stall:0@step:0,for=1"]})"), "f", from_file);
  EXPECT_EQ(from_file.faults.size(), 2u);
  read_run_config(nlohmann::json::parse(R"({"faults": "gpu:3@step:1"})"), "f", from_file);
  EXPECT_EQ(from_file.faults, std::vector<std::string>{"gpu:3@step:1"});
  EXPECT_NE(error_of([&] {
              read_run_config(nlohmann::json::parse(R"({"faults": [3]})"), "f", from_file);
            }).find("f: option 'faults': expected a string or a list of strings"),
            std::string::npos);
  // The resolved configuration writes the list back and reads it again.
  RunConfig back = default_run_config();
  read_run_config(run_config_to_json(cfg), "dump", back);
  EXPECT_EQ(back.faults, cfg.faults);
}

// Hierarchical's notify messages of one call, every rank's summed, with the GPUs `dead` failed: each live rank
// sends its counts to each node's relay of its rail (a node with no live GPU gets none), then to every live GPU
// of its own node, itself included. Counted here from the topology alone, so that the report's count proves
// nothing went to a failed GPU or came from it and each rail reached one relay per node.
double hierarchical_notify_messages(int nodes, int gpus, const std::set<int>& dead) {
  std::vector<int> live_in(nodes, 0);
  for (int r = 0; r < nodes * gpus; ++r)
    if (!dead.count(r)) ++live_in[r / gpus];
  int nodes_live = 0;
  for (int n = 0; n < nodes; ++n) nodes_live += live_in[n] > 0;
  double m = 0;
  for (int n = 0; n < nodes; ++n) m += live_in[n] * (nodes_live + live_in[n]);
  return m;
}

RunConfig sim_run(int redundant) {
  RunConfig c;
  c.backend = "sim";
  c.nodes = 8;
  c.gpus_per_node = 8;
  c.model = "deepseek-v3";
  c.tokens = 256;
  c.steps = 4;
  c.redundant_experts = redundant;
  c.faults = {"gpu:5@step:2"};
  return c;
}

TEST(FaultRuns, RunChecksNameTheSpec) {
  if (!have_sim()) GTEST_SKIP() << "no sim backend in this build";
  const std::vector<std::pair<std::string, std::string>> cases = {
      {"gpu:64@step:1", "rank 64 is outside 0..63"},
      {"gpu:1@step:4", "step 4 is outside the run's steps 0..3"},
      {"gpu:1@t:0.1", "@t:T is for link faults only"},
      {"stall:1@t:0.1,for=1", "@t:T is for link faults only"},
  };
  for (const auto& [spec, part] : cases) {
    RunConfig c = sim_run(0);
    c.faults = {spec};
    const std::string e = error_of([&] { run_experiment(c); });
    EXPECT_NE(e.find("fault '" + spec + "'"), std::string::npos) << e;
    EXPECT_NE(e.find(part), std::string::npos) << e;
  }
  RunConfig c = sim_run(0);
  c.rebalance_every = 1;
  EXPECT_NE(error_of([&] { run_experiment(c); }).find("--rebalance-every"), std::string::npos);
}

TEST(FaultRuns, FailedGpuWithRedundantExpertsLosesNothing) {
  if (!have_sim()) GTEST_SKIP() << "no sim backend in this build";
  RunConfig c = sim_run(64);
  const nlohmann::json r = run_experiment(c);
  const nlohmann::json& f = r.at("faults");
  EXPECT_EQ(f.at("tokens_lost").get<int64_t>(), 0);
  EXPECT_GT(f.at("tokens_rerouted").get<int64_t>(), 0);
  // Rank 5's own batches of steps 2 and 3 (one layer) left with it.
  EXPECT_EQ(f.at("tokens_departed").get<int64_t>(), 2 * c.tokens);
  EXPECT_DOUBLE_EQ(f.at("detect_s").get<double>(), c.detect_timeout_s);
  EXPECT_GT(f.at("recover_s").get<double>(), 0.0);
  EXPECT_GT(f.at("slots_restored").get<int>(), 0);
  EXPECT_EQ(f.at("failed_ranks"), nlohmann::json::array({5}));
  EXPECT_TRUE(f.at("first_lost").empty());
  EXPECT_EQ(r.at("verification").at("lost_selections").get<int64_t>(), 0);
  // Hierarchical (the default): from step 2 on rank 5 relays nothing and gets no notify message; the other
  // nodes' GPUs of rail 5 send to node 0 through its other live GPUs (hierarchical_notify_messages).
  EXPECT_DOUBLE_EQ(r.at("phases").at("notify").at("messages").get<double>(),
                   (2 * hierarchical_notify_messages(8, 8, {}) + 2 * hierarchical_notify_messages(8, 8, {5})) / 4);
}

// Lost selections, counted here from the routing and the placement: with one slot per expert (no redundant
// experts, the contiguous placement) rank r holds experts 4r..4r+3 alone, and every selection of one of them by a
// surviving rank from the failure step on is lost.
TEST(FaultRuns, FailedGpuWithoutRedundancyLosesExactlyItsExpertsSelections) {
  if (!have_sim()) GTEST_SKIP() << "no sim backend in this build";
  RunConfig c = sim_run(0);
  c.layers = 2;
  const nlohmann::json r = run_experiment(c);
  const nlohmann::json& f = r.at("faults");
  const MoeShape shape = config_model(c);
  const Topology topo(config_cluster(c));
  const Placement p = Placement::contiguous(shape.num_experts, topo.size(), 0);
  std::set<int> alone_on_5;
  for (int e = 0; e < shape.num_experts; ++e) {
    bool elsewhere = false;
    for (int32_t s : p.replicas(e)) elsewhere = elsewhere || p.rank_of_slot(s) != 5;
    if (!elsewhere) alone_on_5.insert(e);
  }
  EXPECT_EQ(alone_on_5, (std::set<int>{20, 21, 22, 23}));
  RoutingParams rp{shape, topo, c.tokens, c.seed, c.steps, c.layers};
  rp.weights = false;
  auto routing = make_routing(c.routing, rp);
  int64_t expected = 0;
  for (int step = 2; step < c.steps; ++step)
    for (int l = 0; l < c.layers; ++l)
      for (int src = 0; src < topo.size(); ++src) {
        if (src == 5) continue;
        for (int32_t e : routing->batch(step, l, src).topk_idx) expected += alone_on_5.count(e);
      }
  ASSERT_GT(expected, 0);
  EXPECT_EQ(f.at("tokens_lost").get<int64_t>(), expected);
  EXPECT_EQ(f.at("tokens_rerouted").get<int64_t>(), 0);  // rank 5's experts had no other replica
  EXPECT_EQ(f.at("lost_experts").size(), 2u);            // one entry per layer
  EXPECT_EQ(f.at("lost_experts")[0].at("experts"), nlohmann::json::array({20, 21, 22, 23}));
  ASSERT_FALSE(f.at("first_lost").empty());
  for (const auto& s : f.at("first_lost")) {
    EXPECT_EQ(s.at("step").get<int>(), 2);
    EXPECT_TRUE(alone_on_5.count(s.at("expert").get<int>()));
    EXPECT_NE(s.at("source_rank").get<int>(), 5);
  }
  EXPECT_EQ(r.at("verification").at("lost_selections").get<int64_t>(), expected);
}

RunConfig emu_run() {
  RunConfig c = default_run_config();
  c.backend = "emu";
  c.nodes = 2;
  c.gpus_per_node = 4;
  c.model = "mixtral-8x7b";
  c.experts = 32;
  c.hidden = 256;
  c.tokens = 32;
  c.steps = 3;
  c.redundant_experts = 8;
  c.detect_timeout_s = 0.01;
  // Hierarchical, the default, has its own tests (EmuHierarchicalRelaysAFailedGpusRail).
  c.algorithm = "flat";
  return c;
}

TEST(FaultRuns, EmuFailoverVerifiesRealBytes) {
  // 32 experts, 4 per rank, and rank r's redundant slot holds expert r: rank 1's experts 4..7 have replicas on
  // ranks 4..7 and its redundant expert 1 on rank 0, so nothing is lost.
  RunConfig c = emu_run();
  c.faults = {"gpu:1@step:1"};
  nlohmann::json r = run_experiment(c);
  EXPECT_TRUE(r.at("verified").get<bool>()) << r.at("verification").dump();
  EXPECT_EQ(r.at("faults").at("tokens_lost").get<int64_t>(), 0);
  EXPECT_GT(r.at("faults").at("tokens_rerouted").get<int64_t>(), 0);
  EXPECT_EQ(r.at("verification").at("lost_selections").get<int64_t>(), 0);
  EXPECT_TRUE(r.at("faults").at("failed_ranks_stopped").get<bool>());
  // Rank 1's thread stopped at step 1: from then on it sent no notify message and none was sent to it. Flat's
  // notify goes from every rank to every rank, itself included: 8 x 8 messages a call before, 7 x 7 after.
  const int R = 8, S = 1;
  EXPECT_DOUBLE_EQ(r.at("phases").at("notify").at("messages").get<double>(),
                   (S * R * R + (c.steps - S) * (R - 1) * (R - 1)) / static_cast<double>(c.steps));
  // Its tokens of steps 1 and 2 left with it (32 a step), as on sim.
  EXPECT_EQ(r.at("faults").at("tokens_departed").get<int64_t>(), (c.steps - S) * c.tokens);
  // Rank 5's experts 20..23 have no other replica: their selections are lost, counted in both blocks, and the
  // rest still checks against the reference without them.
  c.faults = {"gpu:5@step:1"};
  r = run_experiment(c);
  const int64_t lost = r.at("faults").at("tokens_lost").get<int64_t>();
  EXPECT_GT(lost, 0);
  EXPECT_EQ(r.at("verification").at("lost_selections").get<int64_t>(), lost);
  EXPECT_NE(r.at("verification").value("lost_note", "").find(std::to_string(lost) + " (token, expert)"),
            std::string::npos);
  EXPECT_TRUE(r.at("verified").get<bool>()) << r.at("verification").dump();
  EXPECT_NE(format_summary(r).find(std::to_string(lost) + " selections LOST"), std::string::npos);
  // A NIC down on emu: the same failover selection, real bytes verified.
  c.faults = {"nic:1@step:1"};
  r = run_experiment(c);
  EXPECT_TRUE(r.at("verified").get<bool>()) << r.at("verification").dump();
  EXPECT_EQ(r.at("verification").at("lost_selections"), r.at("faults").at("tokens_lost"));
}

// The fabric's live-rank set on emu: a rank that stops is left out of barriers and all-to-alls once the others
// marked it, and messages naming it are errors; the others never wait for it (a wait would end at the 20 s limit).
TEST(FaultRuns, AFailedRankIsLeftOutOfTheFabric) {
  auto backend = create_backend("emu");
  ClusterSpec spec = cluster_preset("h800-cx7");
  spec.nodes = 1;
  spec.gpus_per_node = 4;
  const Topology topo(spec);
  constexpr int kFailed = 2;
  std::vector<std::vector<size_t>> got(4);
  std::vector<std::vector<int32_t>> values(4);
  std::vector<std::string> send_error(4), recv_error(4);
  std::vector<std::vector<RankResult>> gathered(4);
  backend->launch(topo, LaunchOptions{false, 20, ""}, [&](Fabric& f) {
    const int me = f.rank();
    f.barrier();
    if (me == kFailed) return;  // stops: no barrier, no message from here on
    f.mark_failed(kFailed);
    f.barrier();  // of the three live ranks
    int32_t out[4], in[4] = {-1, -1, -1, -1};
    std::vector<PeerSend> sends;
    std::vector<PeerRecv> recvs;
    for (int p = 0; p < 4; ++p) {
      out[p] = 10 * me + p;
      sends.push_back({p, ConstBuf{&out[p], 4}});
      recvs.push_back({p, MutBuf{&in[p], 4}, 99, 99});
    }
    f.alltoallv(make_tag(Phase::kUser, 0, 0), sends, recvs, Deadline::after(f, 10));
    for (const PeerRecv& r : recvs) got[me].push_back(r.bytes);
    values[me].assign(in, in + 4);
    send_error[me] = error_of([&] { f.isend(kFailed, make_tag(Phase::kUser, 1, 0), ConstBuf{out, 4}); });
    recv_error[me] = error_of([&] { f.irecv(kFailed, make_tag(Phase::kUser, 1, 0), MutBuf{in, 4}); });
    RankResult mine;
    mine.rank = me;
    gathered[me] = gather_rank_results(f, mine, 10);
  });
  for (int me = 0; me < 4; ++me) {
    if (me == kFailed) {
      EXPECT_TRUE(got[me].empty());
      continue;
    }
    SCOPED_TRACE(me);
    ASSERT_EQ(got[me].size(), 4u);
    for (int p = 0; p < 4; ++p) {
      EXPECT_EQ(got[me][p], p == kFailed ? 0u : 4u) << p;
      EXPECT_EQ(values[me][p], p == kFailed ? -1 : 10 * p + me) << p;
    }
    EXPECT_NE(send_error[me].find("peer 2 has failed"), std::string::npos) << send_error[me];
    EXPECT_NE(recv_error[me].find("peer 2 has failed"), std::string::npos) << recv_error[me];
  }
  // The gather is of the live ranks: rank 0 gets the others', the failed rank's entry left empty.
  ASSERT_EQ(gathered[0].size(), 4u);
  EXPECT_EQ(gathered[0][1].rank, 1);
  EXPECT_EQ(gathered[0][3].rank, 3);
  EXPECT_EQ(gathered[0][kFailed].rank, -1);
}

// The algorithms that send straight to the expert's GPU (flat, low-latency) or to every rank (allgather) run on
// among the live ranks; each verifies with the failed rank's results up to its failure kept. When rank 0 fails,
// the lowest live rank gathers the report.
TEST(FaultRuns, EmuFailoverEveryDirectAlgorithm) {
  for (const std::string algorithm : {"flat", "low-latency", "allgather"}) {
    for (const std::string spec : {"gpu:1@step:1", "gpu:0@step:2"}) {
      SCOPED_TRACE(algorithm + " " + spec);
      RunConfig c = emu_run();
      c.algorithm = algorithm;
      c.faults = {spec};
      const nlohmann::json r = run_experiment(c);
      EXPECT_TRUE(r.at("verified").get<bool>()) << r.at("verification").dump();
      // Rank 1's experts all have a replica elsewhere; rank 0's redundant slot holds its own expert 0, which dies
      // with it (the contiguous placement), so expert 0's selections are lost from step 2 on, and counted.
      const int64_t lost = r.at("faults").at("tokens_lost").get<int64_t>();
      EXPECT_EQ(r.at("verification").at("lost_selections").get<int64_t>(), lost);
      if (spec == "gpu:1@step:1") {
        EXPECT_EQ(lost, 0);
      }
      if (spec == "gpu:0@step:2") {
        EXPECT_GT(lost, 0);
        for (const auto& e : r.at("faults").at("lost_experts")) EXPECT_EQ(e.at("experts"), nlohmann::json({0}));
      }
      EXPECT_TRUE(r.at("faults").at("failed_ranks_stopped").get<bool>());
      EXPECT_EQ(r.at("ranks").get<int>(), 8);
    }
  }
}

// Without redundant experts on emu: rank 1 stops at step 1 and its experts 4..7 (32 experts, 4 a rank) are on no
// live GPU; every selection of them by the others from step 1 on is lost, counted here from the routing.
TEST(FaultRuns, EmuFailedGpuWithoutRedundancyCountsLostExactly) {
  for (const std::string algorithm : {"flat", "hierarchical"}) {
    SCOPED_TRACE(algorithm);
    RunConfig c = emu_run();
    c.algorithm = algorithm;
    c.redundant_experts = 0;
    c.faults = {"gpu:1@step:1"};
    const nlohmann::json r = run_experiment(c);
    const MoeShape shape = config_model(c);
    const Topology topo(config_cluster(c));
    RoutingParams rp{shape, topo, c.tokens, c.seed, c.steps, c.layers};
    rp.weights = false;
    auto routing = make_routing(c.routing, rp);
    int64_t expected = 0;
    for (int step = 1; step < c.steps; ++step)
      for (int l = 0; l < c.layers; ++l)
        for (int src = 0; src < topo.size(); ++src)
          if (src != 1)
            for (int32_t e : routing->batch(step, l, src).topk_idx) expected += e >= 4 && e < 8;
    ASSERT_GT(expected, 0);
    EXPECT_EQ(r.at("faults").at("tokens_lost").get<int64_t>(), expected);
    EXPECT_EQ(r.at("verification").at("lost_selections").get<int64_t>(), expected);
    EXPECT_EQ(r.at("faults").at("lost_experts")[0].at("experts"), nlohmann::json::array({4, 5, 6, 7}));
    EXPECT_TRUE(r.at("verified").get<bool>()) << r.at("verification").dump();
    // The failed rank's payload ledger, kept up to its stop, agrees with the survivors' on every rank pair.
    const auto& p = r.at("verification").at("payloads");
    EXPECT_EQ(p.at("checked").get<std::string>(), "counts and checksums") << p.dump();
    EXPECT_EQ(p.at("mismatches").get<int>(), 0) << p.dump();
  }
}

// Hierarchical on emu with failed GPUs (2 nodes x 4): a failed GPU's rail goes through another live GPU of its
// node, in dispatch and in combine, and nothing is sent to it or expected from it. Cases: one GPU (rank 1; rank 7,
// the last local index; rank 0, which gathered the results before), two of one node at once (ranks 0 and 3: ranks
// 1 and 2 each relay one more rail), and a whole node (ranks 4-7: no traffic goes to node 1 at all). Each verifies
// with real bytes, its lost selections counted in both blocks, and the payload ledgers agree on every rank pair.
TEST(FaultRuns, EmuHierarchicalRelaysAFailedGpusRail) {
  const std::vector<std::pair<std::vector<std::string>, std::set<int>>> cases = {
      {{"gpu:1@step:1"}, {1}},
      {{"gpu:7@step:1"}, {7}},
      {{"gpu:0@step:1"}, {0}},
      {{"gpu:0@step:1", "gpu:3@step:1"}, {0, 3}},
      {{"gpu:4@step:1", "gpu:5@step:1", "gpu:6@step:1", "gpu:7@step:1"}, {4, 5, 6, 7}},
  };
  for (const auto& [specs, dead] : cases) {
    SCOPED_TRACE(specs.front() + " and " + std::to_string(specs.size() - 1) + " more");
    RunConfig c = emu_run();
    c.algorithm = "hierarchical";
    c.faults = specs;
    const nlohmann::json r = run_experiment(c);
    EXPECT_TRUE(r.at("verified").get<bool>()) << r.at("verification").dump();
    const nlohmann::json& f = r.at("faults");
    EXPECT_TRUE(f.at("failed_ranks_stopped").get<bool>());
    EXPECT_EQ(r.at("verification").at("lost_selections"), f.at("tokens_lost"));
    // Rank 1's experts 4..7 have replicas on ranks 4..7 (32 experts, rank r's redundant slot holds expert r).
    if (dead == std::set<int>{1}) {
      EXPECT_EQ(f.at("tokens_lost").get<int64_t>(), 0);
    }
    if (dead.size() > 1) {
      EXPECT_GT(f.at("tokens_lost").get<int64_t>(), 0);
    }
    EXPECT_GT(f.at("tokens_rerouted").get<int64_t>(), 0);
    const int S = 1;
    EXPECT_DOUBLE_EQ(
        r.at("phases").at("notify").at("messages").get<double>(),
        (S * hierarchical_notify_messages(2, 4, {}) + (c.steps - S) * hierarchical_notify_messages(2, 4, dead)) /
            c.steps);
    const auto& p = r.at("verification").at("payloads");
    EXPECT_EQ(p.at("checked").get<std::string>(), "counts and checksums") << p.dump();
    EXPECT_EQ(p.at("mismatches").get<int>(), 0) << p.dump();
  }
  // A stall stops nothing: hierarchical runs with it as before.
  RunConfig c = emu_run();
  c.algorithm = "hierarchical";
  c.faults = {"stall:1@step:1,for=0.01"};
  EXPECT_TRUE(run_experiment(c).at("verified").get<bool>());
}

// The relay choice is the same on sim, where the failed rank's actor runs on: the same run (2 x 4, real payload
// on emu, the simulated one's counts) sends the same messages in every phase and counts the same re-routed and
// lost selections; with real bytes on sim it verifies.
TEST(FaultRuns, SimHierarchicalRoutesAFailedGpuAsEmuDoes) {
  if (!have_sim()) GTEST_SKIP() << "no sim backend in this build";
  for (const int redundant : {8, 0}) {
    SCOPED_TRACE(redundant);
    RunConfig c = emu_run();
    c.algorithm = "hierarchical";
    c.redundant_experts = redundant;
    c.faults = {"gpu:6@step:1"};
    const nlohmann::json emu = run_experiment(c);
    c.backend = "sim";
    const nlohmann::json sim = run_experiment(c);
    for (const char* phase : {"notify", "dispatch", "combine"})
      EXPECT_EQ(sim.at("phases").at(phase).at("messages"), emu.at("phases").at(phase).at("messages")) << phase;
    for (const char* key : {"tokens_rerouted", "tokens_lost", "tokens_departed"})
      EXPECT_EQ(sim.at("faults").at(key), emu.at("faults").at(key)) << key;
    // With real bytes on sim the failed rank's actor runs on with nothing to send, and the result verifies.
    c.payload = "real";
    const nlohmann::json real = run_experiment(c);
    EXPECT_TRUE(real.at("verified").get<bool>()) << real.at("verification").dump();
    EXPECT_EQ(real.at("verification").at("lost_selections"), emu.at("faults").at("tokens_lost"));
    EXPECT_EQ(real.at("phases").at("dispatch").at("messages"), emu.at("phases").at("dispatch").at("messages"));
  }
}

// Step 0's batches at every step: a routing that repeats, so that cached layouts hit.
class RepeatingRouting : public RoutingSource {
 public:
  explicit RepeatingRouting(std::unique_ptr<RoutingSource> inner) : inner_(std::move(inner)) {}
  std::string name() const override { return "repeat:" + inner_->name(); }
  RoutingBatch batch(int step, int layer, int rank) override { return inner_->batch(0, layer, rank); }

 private:
  std::unique_ptr<RoutingSource> inner_;
};

// --layout-cache with a failed GPU: the layouts cached before the failure are not vouched for after it (the same
// routing is then served without rank 5), so step 2 runs notify again and steps 3 and 4 hit what it cached. The
// counts and, on emu, the verified result are those of the same run without the cache.
TEST(FaultRuns, LayoutCacheStartsAgainAtAFailure) {
  std::vector<std::string> backends{"emu"};
  if (have_sim()) backends.push_back("sim");
  for (const std::string& backend : backends)
    for (const std::string algorithm : {"flat", "hierarchical", "low-latency"}) {
      SCOPED_TRACE(backend + " " + algorithm);
      RunConfig c = emu_run();
      c.backend = backend;
      c.algorithm = algorithm;
      c.steps = 5;
      c.layers = 2;
      c.faults = {"gpu:5@step:2"};
      const MoeShape shape = config_model(c);
      const Topology topo(config_cluster(c));
      const RoutingParams rp{shape, topo, c.tokens, c.seed, c.steps, c.layers};
      c.routing_source = std::make_shared<RepeatingRouting>(make_routing(c.routing, rp));
      RunConfig off = c;
      c.layout_cache = 4;
      const nlohmann::json r = run_experiment(c), r0 = run_experiment(off);
      const nlohmann::json& lc = r.at("layout_cache");
      EXPECT_EQ(lc.at("misses").get<long>(), 2 * c.layers) << lc.dump();  // steps 0 and 2
      EXPECT_EQ(lc.at("hits").get<long>(), 3 * c.layers) << lc.dump();    // steps 1, 3 and 4
      for (const char* key : {"tokens_rerouted", "tokens_lost", "tokens_departed"})
        EXPECT_EQ(r.at("faults").at(key), r0.at("faults").at(key)) << key;
      EXPECT_GT(r.at("faults").at("tokens_rerouted").get<int64_t>(), 0);
      if (backend == "emu") {
        EXPECT_TRUE(r.at("verified").get<bool>()) << r.at("verification").dump();
        EXPECT_EQ(r.at("verification").at("lost_selections"), r.at("faults").at("tokens_lost"));
      }
    }
}

TEST(FaultRuns, StragglerSlowsTheLayer) {
  if (!have_sim()) GTEST_SKIP() << "no sim backend in this build";
  RunConfig c = sim_run(0);
  c.faults = {};
  const double base = run_experiment(c).at("step_time").at("layers_s").get<double>();
  c.faults = {"straggler:3,x=4"};
  const nlohmann::json r = run_experiment(c);
  EXPECT_GT(r.at("step_time").at("layers_s").get<double>(), base * 1.2);
  EXPECT_EQ(r.at("faults").at("tokens_lost").get<int64_t>(), 0);
  EXPECT_DOUBLE_EQ(r.at("faults").at("list")[0].at("slowdown").get<double>(), 4.0);
}

// A NIC down isolates its GPU from other nodes, both ways: other nodes' selections of its experts go to replicas
// elsewhere (with 64 redundant experts rank 5's all have one, on ranks 20-23 and 1), and its own selections of
// experts with no replica in its node are lost: counted here from the routing and the placement.
TEST(FaultRuns, NicDownLosesOnlyItsOwnCrossNodeSelections) {
  if (!have_sim()) GTEST_SKIP() << "no sim backend in this build";
  RunConfig c = sim_run(64);
  c.faults = {"nic:5@step:2"};
  const nlohmann::json r = run_experiment(c);
  const nlohmann::json& f = r.at("faults");
  const MoeShape shape = config_model(c);
  const Topology topo(config_cluster(c));
  const Placement p = Placement::contiguous(shape.num_experts, topo.size(), 64);
  std::vector<char> in_node_0(shape.num_experts, 0);
  for (int s = 0; s < p.num_slots(); ++s)
    if (topo.node_of(p.rank_of_slot(s)) == 0) in_node_0[p.expert_of_slot(s)] = 1;
  RoutingParams rp{shape, topo, c.tokens, c.seed, c.steps, c.layers};
  rp.weights = false;
  auto routing = make_routing(c.routing, rp);
  int64_t expected = 0;
  for (int step = 2; step < c.steps; ++step)
    for (int32_t e : routing->batch(step, 0, 5).topk_idx) expected += !in_node_0[e];
  ASSERT_GT(expected, 0);
  EXPECT_EQ(f.at("tokens_lost").get<int64_t>(), expected);
  EXPECT_GT(f.at("tokens_rerouted").get<int64_t>(), 0);
  EXPECT_EQ(f.at("tokens_departed").get<int64_t>(), 0);
  EXPECT_TRUE(f.at("failed_ranks").empty());
  for (const auto& s : f.at("first_lost")) EXPECT_EQ(s.at("source_rank").get<int>(), 5);
  EXPECT_DOUBLE_EQ(f.at("detect_s").get<double>(), c.detect_timeout_s);
  // A flapping NIC is down in steps [1, 2) and [3, 4): detected twice.
  c.faults = {"flap:5,period=1"};
  const nlohmann::json fl = run_experiment(c);
  EXPECT_DOUBLE_EQ(fl.at("faults").at("detect_s").get<double>(), 2 * c.detect_timeout_s);
  EXPECT_GT(fl.at("faults").at("tokens_lost").get<int64_t>(), 0);
}

TEST(FaultRuns, DegradedLinkSlowsDispatch) {
  if (!have_sim()) GTEST_SKIP() << "no sim backend in this build";
  RunConfig c = sim_run(0);
  c.faults = {};
  c.steps = 2;
  const nlohmann::json base = run_experiment(c);
  c.faults = {"link:3@step:1,bw=10"};
  const nlohmann::json r = run_experiment(c);
  // Step 0 runs at full bandwidth (the same time as without the fault), step 1 with rank 3's NIC at 10%.
  EXPECT_DOUBLE_EQ(r.at("per_step")[0].at("layer_time_s").get<double>(),
                   base.at("per_step")[0].at("layer_time_s").get<double>());
  EXPECT_GT(r.at("per_step")[1].at("layer_time_s").get<double>(),
            1.5 * base.at("per_step")[1].at("layer_time_s").get<double>());
  EXPECT_GT(r.at("phases").at("dispatch").at("time_s").get<double>(),
            base.at("phases").at("dispatch").at("time_s").get<double>());
  // The simulator's other exchange models see the same degraded link.
  c.sim_model = "ptask-pairs";
  const nlohmann::json pairs = run_experiment(c);
  EXPECT_NEAR(pairs.at("per_step")[1].at("layer_time_s").get<double>(),
              r.at("per_step")[1].at("layer_time_s").get<double>(),
              1e-9 * r.at("per_step")[1].at("layer_time_s").get<double>());
}

TEST(FaultRuns, LinkDegradedAtATimeChangesTransfersUnderWay) {
  if (!have_sim()) GTEST_SKIP() << "no sim backend in this build";
  RunConfig c = sim_run(0);
  c.faults = {};
  c.steps = 3;
  const auto steps_of = [&](const std::vector<std::string>& faults) {
    c.faults = faults;
    std::vector<double> t;
    const nlohmann::json r = run_experiment(c);
    for (const auto& s : r.at("per_step")) t.push_back(s.at("layer_time_s").get<double>());
    return t;
  };
  const std::vector<double> base = steps_of({}), by_step = steps_of({"link:3@step:0,bw=10"});
  // At time 0 the link is degraded before any transfer: the same as from step 0.
  const std::vector<double> at0 = steps_of({"link:3@t:0,bw=10"});
  for (int s = 0; s < 3; ++s) EXPECT_DOUBLE_EQ(at0[s], by_step[s]) << s;
  // Halfway through step 1 (the run's clock: step 0, then step 1 at full bandwidth until then): step 0 as
  // without the fault, step 1 in between, step 2 all degraded. The steps follow each other with nothing between
  // their layer times, which the first of these checks holds.
  const double mid = base[0] + base[1] / 2;
  char spec[64];
  std::snprintf(spec, sizeof spec, "link:3@t:%.9g,bw=10", mid);
  const std::vector<double> during = steps_of({spec});
  EXPECT_DOUBLE_EQ(during[0], base[0]);
  EXPECT_GT(during[1], base[1] * 1.2);
  EXPECT_LT(during[1], by_step[1] * 0.9);
  EXPECT_NEAR(during[2], by_step[2], 1e-9 * by_step[2]);  // the clock's picosecond rounding aside
  // After the run's end it changes nothing, and does not keep the simulation going.
  const std::vector<double> late = steps_of({"link:3@t:1000,bw=10"});
  for (int s = 0; s < 3; ++s) EXPECT_DOUBLE_EQ(late[s], base[s]) << s;
  // The report names the time; checkpoints do not keep a timed fault yet.
  c.faults = {"link:3@t:0.5,bw=10"};
  EXPECT_DOUBLE_EQ(run_experiment(c).at("faults").at("list")[0].at("t_s").get<double>(), 0.5);
  c.checkpoint = ::testing::TempDir() + "timed_link.ckpt";
  EXPECT_NE(error_of([&] { run_experiment(c); }).find("not kept in checkpoints"), std::string::npos);
}

TEST(FaultRuns, LinkFaultsAreRefusedOnEmu) {
  RunConfig c = emu_run();
  c.faults = {"link:1@step:0,bw=50"};
  EXPECT_NE(error_of([&] { run_experiment(c); }).find("has no links to degrade"), std::string::npos);
}

TEST(FaultRuns, StallDelaysItsStepOnEmu) {
  RunConfig c = emu_run();
  c.faults = {"stall:2@step:1,for=0.3"};
  const nlohmann::json r = run_experiment(c);
  EXPECT_TRUE(r.at("verified").get<bool>());
  EXPECT_GE(r.at("wall_s").get<double>(), 0.3);  // a lower bound: the sleep itself
}

TEST(FaultRuns, RunsWithoutFaultsHaveNoFaultKeys) {
  RunConfig c = emu_run();
  const nlohmann::json r = run_experiment(c);
  EXPECT_FALSE(r.contains("faults"));
  EXPECT_FALSE(r.at("verification").contains("lost_selections"));
}

}  // namespace
}  // namespace eplab
