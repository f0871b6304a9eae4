// Heat predictors on known sequences (exact values), MAPE, and the registry's errors.
#include <gtest/gtest.h>

#include "engine/error.hpp"
#include "policies/heat/heat_predictor.hpp"

namespace eplab {
namespace {

std::vector<double> run(const std::string& spec, const std::vector<std::vector<double>>& seq) {
  auto p = create_heat_predictor(spec);
  for (const auto& x : seq) p->observe(x);
  return p->predict();
}

TEST(HeatPredictor, EmptyBeforeHistory) { EXPECT_TRUE(create_heat_predictor("last")->predict().empty()); }

TEST(HeatPredictor, LastValue) { EXPECT_EQ(run("last", {{1, 2}, {3, 4}}), (std::vector<double>{3, 4})); }

TEST(HeatPredictor, EmaSeedsWithFirstObservation) {
  // s = 4; 0.5*8 + 0.5*4 = 6; 0.5*0 + 0.5*6 = 3.
  EXPECT_EQ(run("ema:alpha=0.5", {{4}, {8}, {0}}), (std::vector<double>{3}));
  EXPECT_EQ(run("ema:alpha=1", {{4}, {8}}), (std::vector<double>{8}));
}

TEST(HeatPredictor, WindowMeanOfLastW) {
  EXPECT_EQ(run("window:w=2", {{1}, {3}, {8}}), (std::vector<double>{5.5}));
  EXPECT_EQ(run("window:w=4", {{1}, {3}}), (std::vector<double>{2}));  // shorter history: its mean
}

TEST(HeatPredictor, TrendHolt) {
  // l=10,b=0; l=0.5*20+0.5*10=15, b=0.5*5=2.5 -> 17.5; l=0.5*30+0.5*17.5=23.75, b=0.5*8.75+0.5*2.5=5.625.
  EXPECT_EQ(run("trend:alpha=0.5,beta=0.5", {{10}, {20}}), (std::vector<double>{17.5}));
  EXPECT_EQ(run("trend:alpha=0.5,beta=0.5", {{10}, {20}, {30}}), (std::vector<double>{29.375}));
  // A falling expert is clamped at zero load, not forecast negative.
  EXPECT_EQ(run("trend:alpha=1,beta=1", {{10}, {0}}), (std::vector<double>{0}));
}

TEST(HeatPredictor, RejectsChangingExpertCount) {
  auto p = create_heat_predictor("last");
  p->observe({1, 2});
  EXPECT_THROW(p->observe({1, 2, 3}), EplabError);
}

TEST(HeatPredictor, Mape) {
  // |1-2|/2 = 0.5 and |5-4|/4 = 0.25; the expert with no load is left out.
  EXPECT_DOUBLE_EQ(forecast_mape({1, 3, 5}, {2, 0, 4}), 37.5);
  EXPECT_THROW(forecast_mape({1}, {1, 2}), EplabError);
}

TEST(HeatPredictor, ExpertLoadCountsSelections) {
  RoutingBatch b;
  b.num_tokens = 2;
  b.topk = 2;
  b.topk_idx = {0, 2, 2, -1};
  std::vector<double> load(3, 0.0);
  add_expert_load(b, load);
  EXPECT_EQ(load, (std::vector<double>{1, 0, 2}));
  std::vector<double> short_load(2, 0.0);
  EXPECT_THROW(add_expert_load(b, short_load), EplabError);
}

TEST(HeatRegistry, UnknownNameListsKnown) {
  try {
    create_heat_predictor("lstm");
    FAIL() << "expected an error";
  } catch (const EplabError& e) {
    EXPECT_NE(std::string(e.what()).find("lstm"), std::string::npos);
    EXPECT_NE(std::string(e.what()).find("ema:alpha=A"), std::string::npos);
  }
}

TEST(HeatRegistry, BadParameters) {
  EXPECT_THROW(create_heat_predictor("ema:alpha=2"), EplabError);
  EXPECT_THROW(create_heat_predictor("ema:beta=0.5"), EplabError);  // unknown key, not silently ignored
  EXPECT_THROW(create_heat_predictor("window:w=1.5"), EplabError);
  EXPECT_THROW(create_heat_predictor("trend:alpha=x"), EplabError);
  EXPECT_EQ(create_heat_predictor("ema:alpha=0.25")->name(), "ema:alpha=0.25");
}

}  // namespace
}  // namespace eplab
