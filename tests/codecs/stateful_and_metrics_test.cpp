// Behaviour over a stream of messages, which single round trips do not show: error feedback keeps the
// accumulated residual bounded (so the mean of what was sent converges to the input), and a delta decoder
// that missed a frame refuses the next delta frames and recovers at the next full frame. Plus the eval
// metrics on examples small enough to compute by hand.
#include <gtest/gtest.h>

#include <cmath>
#include <vector>

#include "policies/codecs/codec.hpp"
#include "policies/codecs/codec_eval.hpp"

namespace eplab {
namespace {

double rel_l2(const std::vector<float>& ref, const std::vector<double>& y) {
  double num = 0, den = 0;
  for (size_t i = 0; i < ref.size(); ++i) {
    num += (y[i] - ref[i]) * (y[i] - ref[i]);
    den += double{ref[i]} * ref[i];
  }
  return std::sqrt(num / den);
}

// Sends the same x `steps` times and returns ||mean of decoded - x|| / ||x|| after each step.
std::vector<double> mean_error_over_steps(const std::string& spec, const std::vector<float>& x, int tokens, int hidden,
                                          int steps) {
  auto enc = create_codec(spec);
  auto dec = create_codec(spec);
  std::vector<double> sum(x.size(), 0.0), mean(x.size());
  std::vector<double> errors;
  std::vector<float> y(x.size());
  for (int s = 0; s < steps; ++s) {
    std::vector<uint8_t> buf;
    enc->encode(x.data(), tokens, hidden, buf, 7);
    dec->decode(buf.data(), buf.size(), tokens, hidden, y.data(), 7);
    for (size_t i = 0; i < x.size(); ++i) {
      sum[i] += y[i];
      mean[i] = sum[i] / (s + 1);
    }
    errors.push_back(rel_l2(x, mean));
  }
  return errors;
}

TEST(ErrorFeedback, MeanOfDecodedOutputsConvergesToTheInput) {
  const int tokens = 8, hidden = 256, steps = 64;
  std::vector<float> x = generate_activations(ActivationKind::kGaussian, tokens, hidden, 3);
  for (const std::string spec :
       {"topk:ratio=0.25,ef=1", "topk:ratio=0.25,ef=1+fp8-e4m3-b128", "threshold:tau=1,ef=1+bf16"}) {
    SCOPED_TRACE(spec);
    std::vector<double> e = mean_error_over_steps(spec, x, tokens, hidden, steps);
    // One message drops most of the vector...
    EXPECT_GT(e.front(), 0.3);
    // ...but what it dropped is carried forward, so the residual sum(x - y_s) stays bounded and the error of
    // the mean falls like 1/steps: after 64 steps well under a tenth of the first message's.
    EXPECT_LT(e.back(), e.front() / 10);
    EXPECT_LT(e.back(), 0.05);
    // Bounded residual: steps * error of the mean does not grow with steps.
    EXPECT_LT(steps * e.back(), 4 * 16 * e[15]);
  }
}

TEST(ErrorFeedback, WithoutFeedbackTheMeanDoesNotConverge) {
  const int tokens = 8, hidden = 256;
  std::vector<float> x = generate_activations(ActivationKind::kGaussian, tokens, hidden, 3);
  std::vector<double> e = mean_error_over_steps("topk:ratio=0.25", x, tokens, hidden, 16);
  EXPECT_NEAR(e.back(), e.front(), 1e-6);  // the same values are dropped every time
  EXPECT_GT(e.back(), 0.3);
}

TEST(DeltaStream, LostFrameThrowsUntilTheNextFullFrame) {
  const int tokens = 4, hidden = 128, period = 4, frames = 12;
  const std::string spec = "delta:period=4+fp8-e4m3-b128";
  auto enc = create_codec(spec);
  auto dec = create_codec(spec);
  // Correlated frames, as consecutive steps of one layer's activations.
  std::vector<std::vector<float>> xs;
  std::vector<float> x = generate_activations(ActivationKind::kGaussian, tokens, hidden, 11);
  for (int f = 0; f < frames; ++f) {
    std::vector<float> fresh = generate_activations(ActivationKind::kGaussian, tokens, hidden, 100 + f);
    for (size_t i = 0; i < x.size(); ++i) x[i] = 0.95f * x[i] + 0.31f * fresh[i];
    xs.push_back(x);
  }
  std::vector<std::vector<uint8_t>> bufs(frames);
  for (int f = 0; f < frames; ++f) enc->encode(xs[f].data(), tokens, hidden, bufs[f], 5);

  std::vector<float> y(xs[0].size());
  const double bound = enc->error_bound_for(hidden);
  auto within_bound = [&](int f) {
    std::vector<double> yd(y.begin(), y.end());
    return rel_l2(xs[f], yd) <= bound;
  };
  dec->decode(bufs[0].data(), bufs[0].size(), tokens, hidden, y.data(), 5);
  EXPECT_TRUE(within_bound(0));
  // Frame 1 is lost. Frame 2 is a delta against it: the decoder must refuse it, not guess.
  int recovered = -1;
  int refused = 0;
  for (int f = 2; f < frames; ++f) {
    try {
      dec->decode(bufs[f].data(), bufs[f].size(), tokens, hidden, y.data(), 5);
    } catch (const CodecError& e) {
      ASSERT_EQ(recovered, -1) << "frame " << f << " refused after recovery: " << e.what();
      ++refused;
      continue;
    }
    if (recovered == -1) recovered = f;
    EXPECT_TRUE(within_bound(f)) << "frame " << f;
  }
  EXPECT_GE(refused, 1);
  ASSERT_NE(recovered, -1) << "never recovered";
  EXPECT_LE(recovered, 1 + period) << "a full frame comes at least every " << period << " frames";
}

TEST(DeltaStream, ResetStartsOverWithAFullFrame) {
  const int tokens = 2, hidden = 64;
  auto enc = create_codec("delta:period=100");
  auto dec = create_codec("delta:period=100");
  std::vector<float> a = generate_activations(ActivationKind::kGaussian, tokens, hidden, 1);
  std::vector<float> y(a.size());
  std::vector<uint8_t> b0, b1;
  enc->encode(a.data(), tokens, hidden, b0, 1);
  enc->encode(a.data(), tokens, hidden, b1, 1);
  // The decoder never saw frame 0 (a new receiver): the delta frame is refused...
  EXPECT_THROW(dec->decode(b1.data(), b1.size(), tokens, hidden, y.data(), 1), CodecError);
  // ...and once the sender resets the stream, its next frame is full and decodes.
  enc->reset(1);
  dec->reset(1);
  std::vector<uint8_t> b2;
  enc->encode(a.data(), tokens, hidden, b2, 1);
  dec->decode(b2.data(), b2.size(), tokens, hidden, y.data(), 1);
  for (size_t i = 0; i < a.size(); ++i) EXPECT_EQ(y[i], a[i]);
}

TEST(EvalMetrics, HandComputedExamples) {
  {  // identical
    std::vector<float> x{1, 2}, y{1, 2};
    ErrorMetrics m = compute_error_metrics(x.data(), y.data(), x.size());
    EXPECT_NEAR(m.calc_diff, 0.0, 1e-12);
    EXPECT_NEAR(m.rel_l2, 0.0, 1e-12);
    EXPECT_NEAR(m.cosine, 1.0, 1e-12);
    EXPECT_EQ(m.max_abs_err, 0.0);
  }
  {  // orthogonal: x' = (2, 1), y' = (1, 2): 1 - 2*4/10
    std::vector<float> x{1, 0}, y{0, 1};
    ErrorMetrics m = compute_error_metrics(x.data(), y.data(), x.size());
    EXPECT_NEAR(m.calc_diff, 0.2, 1e-12);
    EXPECT_NEAR(m.rel_l2, std::sqrt(2.0), 1e-12);
    EXPECT_NEAR(m.cosine, 0.0, 1e-12);
    EXPECT_NEAR(m.max_abs_err, 1.0, 1e-12);
  }
  {  // scaled by 2: cosine is blind to it, rel L2 = 1; x' = (2, 3, 3), y' = (3, 5, 5): 1 - 2*36/81
    std::vector<float> x{1, 2, 2}, y{2, 4, 4};
    ErrorMetrics m = compute_error_metrics(x.data(), y.data(), x.size());
    EXPECT_NEAR(m.calc_diff, 1.0 / 9.0, 1e-12);
    EXPECT_NEAR(m.rel_l2, 1.0, 1e-12);
    EXPECT_NEAR(m.cosine, 1.0, 1e-12);
    EXPECT_NEAR(m.max_abs_err, 2.0, 1e-12);
  }
  {  // everything dropped: x' = (4, 5), y' = (1, 1): 1 - 2*9/43
    std::vector<float> x{3, 4}, y{0, 0};
    ErrorMetrics m = compute_error_metrics(x.data(), y.data(), x.size());
    EXPECT_NEAR(m.calc_diff, 25.0 / 43.0, 1e-12);
    EXPECT_NEAR(m.rel_l2, 1.0, 1e-12);
    EXPECT_NEAR(m.max_abs_err, 4.0, 1e-12);
  }
}

}  // namespace
}  // namespace eplab
