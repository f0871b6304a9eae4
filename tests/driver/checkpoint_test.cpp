// Checkpoints (driver/checkpoint.hpp): codec stream state carried exactly, an emulated run with a delta codec
// stopped and resumed giving the uninterrupted run's report (wall-clock figures aside), and the refusals of
// truncated, corrupt, wrong-version, foreign and wrong-configuration files. Simulated runs are compared byte for
// byte in fresh processes by checkpoint_checks.sh (SimGrid's clock is process-wide).
#include "driver/checkpoint.hpp"

#include <gtest/gtest.h>

#include <cstdio>
#include <filesystem>
#include <fstream>
#include <iterator>
#include <string>
#include <vector>

#include "driver/proto/eplab_checkpoint.pb.h"
#include "engine/backend.hpp"
#include "engine/error.hpp"
#include "policies/codecs/codec.hpp"
#include "traces/trace_file.hpp"

namespace eplab {
namespace {

namespace fs = std::filesystem;

std::string temp_path(const std::string& name) {
  const fs::path dir = fs::temp_directory_path() / ("eplab_ckpt_test_" + std::to_string(::getpid()));
  fs::create_directories(dir);
  return (dir / name).string();
}

std::string slurp(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  return {std::istreambuf_iterator<char>(in), std::istreambuf_iterator<char>()};
}

void spit(const std::string& path, const std::string& bytes) {
  std::ofstream out(path, std::ios::binary | std::ios::trunc);
  out << bytes;
}

std::vector<float> frame(int tokens, int hidden, int seed) {
  std::vector<float> x(static_cast<size_t>(tokens) * hidden);
  for (size_t i = 0; i < x.size(); ++i) x[i] = static_cast<float>((i * 7 + seed * 13) % 29) * 0.25f - 3.0f + seed;
  return x;
}

// Figures measured on the wall clock differ from run to run; everything else must not.
bool wall_clock_key(const std::string& k) {
  static const char* kTimed[] = {"_s", "GBps", "per_s", "_us", "_ms", "util", "fraction"};
  for (const char* t : kTimed)
    if (k.find(t) != std::string::npos) return true;
  return false;
}

nlohmann::json without_times(const nlohmann::json& j) {
  if (j.is_object()) {
    nlohmann::json out = nlohmann::json::object();
    for (const auto& [k, v] : j.items())
      if (!wall_clock_key(k)) out[k] = without_times(v);
    return out;
  }
  if (j.is_array()) {
    nlohmann::json out = nlohmann::json::array();
    for (const auto& v : j) out.push_back(without_times(v));
    return out;
  }
  return j;
}

RunConfig emu_delta_config() {
  RunConfig c;
  c.backend = "emu";
  c.nodes = 1;
  c.gpus_per_node = 4;
  c.model = "mixtral-8x7b";
  c.hidden = 128;
  c.tokens = 32;
  c.steps = 4;
  c.layers = 2;
  c.dispatch_codec = "delta+bf16";
  c.combine_codec = "delta+bf16";
  c.balancer = "eplb";
  c.rebalance_every = 2;
  c.redundant_experts = 4;
  c.layout_cache = 4;
  return c;
}

// A stopped run's checkpoint: the state after `steps` of the config's steps.
std::string stopped_checkpoint(RunConfig c, int steps, const std::string& name) {
  c.checkpoint = temp_path(name);
  c.stop_after_steps = steps;
  const nlohmann::json r = run_experiment(c);
  EXPECT_TRUE(r.value("stopped", false)) << r.dump();
  EXPECT_EQ(r.value("steps_done", -1), steps);
  return c.checkpoint;
}

TEST(CheckpointCodecs, DeltaStateSavedAndLoadedEncodesAndDecodesAsTheOriginal) {
  for (const std::string spec : {"delta+bf16", "delta:period=3+fp8-e4m3-b128", "topk:ratio=0.25,ef=1+bf16"}) {
    auto enc = create_codec(spec), dec = create_codec(spec);
    const int T = 4, H = 64;
    std::vector<uint8_t> wire;
    std::vector<float> out(static_cast<size_t>(T) * H);
    for (int m = 0; m < 3; ++m) {
      wire.clear();
      const auto x = frame(T, H, m);
      enc->encode(x.data(), T, H, wire, 7);
      dec->decode(wire.data(), wire.size(), T, H, out.data(), 7);
    }
    std::vector<uint8_t> enc_state, dec_state;
    enc->save_state(enc_state);
    dec->save_state(dec_state);
    ASSERT_FALSE(enc_state.empty()) << spec;
    auto enc2 = create_codec(spec), dec2 = create_codec(spec);
    enc2->load_state(enc_state.data(), enc_state.size());
    dec2->load_state(dec_state.data(), dec_state.size());
    std::vector<uint8_t> again;
    enc2->save_state(again);
    EXPECT_EQ(again, enc_state) << spec << ": saving a loaded state gives other bytes";
    // The next message: the same bytes from both encoders, the same values from both decoders.
    const auto x = frame(T, H, 3);
    std::vector<uint8_t> w1, w2;
    enc->encode(x.data(), T, H, w1, 7);
    enc2->encode(x.data(), T, H, w2, 7);
    EXPECT_EQ(w1, w2) << spec;
    std::vector<float> o1(out.size()), o2(out.size());
    dec->decode(w1.data(), w1.size(), T, H, o1.data(), 7);
    dec2->decode(w2.data(), w2.size(), T, H, o2.data(), 7);
    EXPECT_EQ(o1, o2) << spec;
    // Bytes the codec did not write are refused, naming it.
    std::vector<uint8_t> cut(enc_state.begin(), enc_state.end() - 3);
    EXPECT_THROW(create_codec(spec)->load_state(cut.data(), cut.size()), CodecError) << spec;
  }
  // A stateless codec refuses state it was never given.
  const uint8_t junk[4] = {1, 2, 3, 4};
  EXPECT_THROW(create_codec("bf16")->load_state(junk, sizeof junk), CodecError);
}

TEST(CheckpointRun, EmuDeltaStoppedAndResumedGivesTheUninterruptedReport) {
  const RunConfig c = emu_delta_config();
  const nlohmann::json whole = run_experiment(c);
  ASSERT_TRUE(whole["verified"].get<bool>()) << whole["verification"].dump();
  const std::string path = stopped_checkpoint(c, 2, "emu_delta.ckpt");
  const Checkpoint saved = read_checkpoint(path);
  EXPECT_EQ(saved.steps_done, 2);
  ASSERT_EQ(saved.ranks.size(), 4u);
  EXPECT_FALSE(saved.ranks[0].dispatch_codec_state.empty()) << "delta references were not saved";
  RunConfig r = c;
  r.resume = path;
  const nlohmann::json resumed = run_experiment(r);
  EXPECT_EQ(without_times(resumed).dump(1), without_times(whole).dump(1));
  // Checkpoints every step of an uninterrupted run change nothing either, and the last one holds every step.
  RunConfig every = c;
  every.checkpoint = temp_path("emu_every.ckpt");
  EXPECT_EQ(without_times(run_experiment(every)).dump(1), without_times(whole).dump(1));
  EXPECT_EQ(read_checkpoint(every.checkpoint).steps_done, c.steps);
}

// A trace whose every step routes alike, so the layout cache hits from the second step on.
std::string repeating_trace(const RunConfig& c) {
  const std::string path = temp_path("repeat.eptrace");
  TraceHeader h;
  h.shape = config_model(c);
  h.nodes = c.nodes;
  h.gpus_per_node = c.gpus_per_node;
  h.num_steps = c.steps;
  h.num_layers = c.layers;
  h.num_ranks = c.nodes * c.gpus_per_node;
  h.tokens_per_rank = c.tokens;
  TraceWriter w(path, h);
  for (int step = 0; step < h.num_steps; ++step)
    for (int layer = 0; layer < h.num_layers; ++layer)
      for (int rank = 0; rank < h.num_ranks; ++rank) {
        RoutingBatch b{step, layer, rank, c.tokens, h.shape.topk, {}, {}, {}};
        for (int t = 0; t < c.tokens; ++t)
          for (int k = 0; k < h.shape.topk; ++k) {
            b.topk_idx.push_back((t * 3 + rank * 5 + layer + k * 4) % h.shape.num_experts);
            b.topk_weights.push_back(0.5f + 0.01f * static_cast<float>(k));
          }
        w.write(b);
      }
  w.close();
  return path;
}

TEST(CheckpointRun, LayoutCacheHitsCarryAcrossTheResume) {
  RunConfig c = emu_delta_config();
  c.balancer = "none";
  c.rebalance_every = 0;
  c.trace = repeating_trace(c);
  const nlohmann::json whole = run_experiment(c);
  ASSERT_GT(whole["layout_cache"]["hits"].get<long>(), 2) << whole["layout_cache"].dump();
  const std::string path = stopped_checkpoint(c, 2, "emu_cache.ckpt");
  EXPECT_EQ(read_checkpoint(path).ranks[1].layout_entries.size(), 2u);  // one per layer
  RunConfig r = c;
  r.resume = path;
  EXPECT_EQ(without_times(run_experiment(r)).dump(1), without_times(whole).dump(1));
}

TEST(CheckpointRun, ResumingWithoutTheCodecStateFails) {
  // The delta references are what a resumed run needs: with them dropped from the checkpoint, the receivers'
  // first delta frame has no base, and the run fails instead of reporting wrong data.
  const RunConfig c = emu_delta_config();
  const std::string path = stopped_checkpoint(c, 2, "emu_nostate.ckpt");
  Checkpoint ck = read_checkpoint(path);
  for (RankCheckpoint& rc : ck.ranks) rc.dispatch_codec_state.clear(), rc.combine_codec_state.clear();
  const std::string bare = temp_path("emu_bare.ckpt");
  // An empty state is not a delta chain's state: restoring it is refused, naming the file.
  write_checkpoint(bare, ck);
  RunConfig r = c;
  r.resume = bare;
  try {
    run_experiment(r);
    FAIL() << "resumed without codec state";
  } catch (const std::exception& e) {
    EXPECT_NE(std::string(e.what()).find("codec"), std::string::npos) << e.what();
  }
}

class CheckpointRefusal : public ::testing::Test {
 protected:
  void SetUp() override {
    cfg_ = emu_delta_config();
    cfg_.steps = 3;
    path_ = stopped_checkpoint(cfg_, 1, "refusal.ckpt");
    bytes_ = slurp(path_);
    ASSERT_GT(bytes_.size(), 100u);
  }
  // Resumes from `bytes` written to a file; returns the error's text ("" when the run went through).
  std::string resume_error(const std::string& bytes, RunConfig c) {
    const std::string p = temp_path("bad.ckpt");
    spit(p, bytes);
    c.resume = p;
    try {
      run_experiment(c);
    } catch (const EplabError& e) {
      const std::string what = e.what();
      EXPECT_NE(what.find(p), std::string::npos) << "the error does not name the file: " << what;
      return what;
    }
    return "";
  }
  RunConfig cfg_;
  std::string path_, bytes_;
};

TEST_F(CheckpointRefusal, TheGoodFileResumes) { EXPECT_EQ(resume_error(bytes_, cfg_), ""); }

TEST_F(CheckpointRefusal, Truncated) {
  for (size_t keep : {size_t{0}, size_t{5}, bytes_.size() / 2, bytes_.size() - 1}) {
    const std::string e = resume_error(bytes_.substr(0, keep), cfg_);
    EXPECT_NE(e.find("truncated"), std::string::npos) << keep << " bytes: " << e;
  }
}

TEST_F(CheckpointRefusal, CorruptBytes) {
  for (size_t at : {bytes_.size() / 3, bytes_.size() / 2, bytes_.size() - 2}) {
    std::string bad = bytes_;
    bad[at] = static_cast<char>(bad[at] ^ 0x5a);
    const std::string e = resume_error(bad, cfg_);
    EXPECT_NE(e.find("corrupt"), std::string::npos) << "byte " << at << ": " << e;
  }
  EXPECT_NE(resume_error("just some text, not a checkpoint\n", cfg_).find("checkpoint"), std::string::npos);
}

TEST_F(CheckpointRefusal, WrongVersion) {
  checkpoint::Envelope env;
  ASSERT_TRUE(env.ParseFromString(bytes_));
  env.set_version(kCheckpointVersion + 1);
  const std::string e = resume_error(env.SerializeAsString(), cfg_);
  EXPECT_NE(e.find("version " + std::to_string(kCheckpointVersion + 1)), std::string::npos) << e;
}

TEST_F(CheckpointRefusal, AnotherConfiguration) {
  RunConfig other = cfg_;
  other.tokens = 48;
  std::string e = resume_error(bytes_, other);
  EXPECT_NE(e.find("--tokens was 32 there, 48 here"), std::string::npos) << e;
  other = cfg_;
  other.dispatch_codec = "delta:period=4+bf16";
  e = resume_error(bytes_, other);
  EXPECT_NE(e.find("--dispatch-codec"), std::string::npos) << e;
  // How the run is carried out may change: a longer timeout resumes.
  other = cfg_;
  other.timeout_s = 120;
  EXPECT_EQ(resume_error(bytes_, other), "");
}

// A GPU that fails at step 1 of 4 on emu (its thread stops; the others leave it out): runs stopped at the
// boundary before the failure, and at boundaries after it, resume to the uninterrupted run's report, with the
// failed rank's kept results, departed tokens, re-routed or lost selections and restored slots.
RunConfig emu_failure_config(int redundant) {
  RunConfig c;
  c.backend = "emu";
  c.nodes = 2;
  c.gpus_per_node = 2;
  c.model = "mixtral-8x7b";
  c.hidden = 128;
  c.tokens = 32;
  c.steps = 4;
  c.layers = 2;
  c.algorithm = "flat";
  c.dispatch_codec = "delta+bf16";
  c.combine_codec = "delta+bf16";
  c.redundant_experts = redundant;
  c.faults = {"gpu:1@step:1"};
  c.detect_timeout_s = 0.01;
  return c;
}

TEST(CheckpointRun, GpuFailureOnEmuResumesBeforeAndAfterTheFailure) {
  for (int redundant : {4, 0}) {
    SCOPED_TRACE("redundant experts " + std::to_string(redundant));
    const RunConfig c = emu_failure_config(redundant);
    const nlohmann::json whole = run_experiment(c);
    ASSERT_TRUE(whole["verified"].get<bool>()) << whole["verification"].dump();
    const nlohmann::json& faults = whole["faults"];
    ASSERT_EQ(faults["failed_ranks"], nlohmann::json::array({1})) << faults.dump();
    ASSERT_TRUE(faults["failed_ranks_stopped"].get<bool>());
    ASSERT_EQ(faults["tokens_departed"].get<int64_t>(), 3 * 2 * 32);  // steps 1-3, both layers
    if (redundant > 0)
      ASSERT_GT(faults["tokens_rerouted"].get<int64_t>(), 0);
    else
      ASSERT_GT(faults["tokens_lost"].get<int64_t>(), 0);
    for (int stop : {1, 2, 3}) {
      SCOPED_TRACE("stopped after " + std::to_string(stop) + " steps");
      const std::string path = stopped_checkpoint(c, stop, "emu_failure.ckpt");
      const Checkpoint saved = read_checkpoint(path);
      ASSERT_EQ(saved.ranks.size(), 4u);
      // Rank 1 fails at the start of step 1: at the boundary after step 0 it is still live.
      EXPECT_EQ(saved.ranks[1].departed, stop > 1);
      EXPECT_FALSE(saved.ranks[0].departed);
      if (stop > 1) {
        EXPECT_EQ(saved.ranks[1].result.steps.step_s.size(), 4u);  // its final, padded result
      }
      RunConfig r = c;
      r.resume = path;
      EXPECT_EQ(without_times(run_experiment(r)).dump(1), without_times(whole).dump(1));
    }
    // Checkpoints every step change nothing, and the last holds rank 1 as departed.
    RunConfig every = c;
    every.checkpoint = temp_path("emu_failure_every.ckpt");
    EXPECT_EQ(without_times(run_experiment(every)).dump(1), without_times(whole).dump(1));
    const Checkpoint last = read_checkpoint(every.checkpoint);
    EXPECT_EQ(last.steps_done, c.steps);
    EXPECT_TRUE(last.ranks[1].departed);
  }
}

TEST(CheckpointRun, DepartedFlagMustMatchTheFaultPlan) {
  // A file whose departed rank is not the one the configuration fails is refused, naming the file.
  const RunConfig c = emu_failure_config(4);
  const std::string path = stopped_checkpoint(c, 2, "emu_departed.ckpt");
  Checkpoint ck = read_checkpoint(path);
  ASSERT_TRUE(ck.ranks[1].departed);
  ck.ranks[1].departed = false;
  const std::string bad = temp_path("emu_departed_bad.ckpt");
  write_checkpoint(bad, ck);
  RunConfig r = c;
  r.resume = bad;
  try {
    run_experiment(r);
    FAIL() << "resumed from a checkpoint whose failed rank is recorded live";
  } catch (const EplabError& e) {
    EXPECT_NE(std::string(e.what()).find(bad), std::string::npos) << e.what();
    EXPECT_NE(std::string(e.what()).find("rank 1 failed before"), std::string::npos) << e.what();
  }
}

TEST(CheckpointRankPart, EncodedAndDecodedAlone) {
  // mpi: a rank's part travels alone to rank 0; it decodes to the same state, and cut bytes are refused.
  const RunConfig c = emu_failure_config(4);
  const Checkpoint ck = read_checkpoint(stopped_checkpoint(c, 2, "emu_part.ckpt"));
  for (int r = 0; r < 4; ++r) {
    const std::string bytes = encode_rank_checkpoint(ck.ranks[r]);
    const RankCheckpoint back =
        decode_rank_checkpoint({reinterpret_cast<const uint8_t*>(bytes.data()), bytes.size()}, r, "test part");
    EXPECT_EQ(back.departed, ck.ranks[r].departed);
    EXPECT_EQ(back.dispatch_codec_state, ck.ranks[r].dispatch_codec_state);
    EXPECT_EQ(encode_rank_checkpoint(back), bytes);
  }
  const std::string bytes = encode_rank_checkpoint(ck.ranks[0]);
  EXPECT_THROW(decode_rank_checkpoint({reinterpret_cast<const uint8_t*>(bytes.data()), bytes.size() / 2}, 0, "cut"),
               EplabError);
}

TEST(CheckpointOptions, RefusedWhereNotSupported) {
  RunConfig c = emu_delta_config();
  RunSetup run = resolve_run(c, *create_backend("emu"));
  c.stop_after_steps = 2;
  EXPECT_THROW(check_checkpoint_options(c, run), EplabError);  // no --checkpoint to resume from
  c.checkpoint = temp_path("opt.ckpt");
  c.stop_after_steps = c.steps;
  EXPECT_THROW(check_checkpoint_options(c, run), EplabError);  // nothing left to stop before
  c.stop_after_steps = 0;
  run.in_process = false;  // ranks as processes (mpi): each sends its part to rank 0, which writes the file
  EXPECT_NO_THROW(check_checkpoint_options(c, run));
  run.in_process = true;
  c.checkpoint = "/nonexistent-dir/x.ckpt";
  EXPECT_THROW(check_checkpoint_options(c, run), EplabError);  // found before the run, not after
}

}  // namespace
}  // namespace eplab
