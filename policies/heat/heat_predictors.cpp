// Built-in heat predictors and their registry.
#include <algorithm>
#include <cmath>
#include <cstdio>
#include <deque>
#include <limits>

#include "engine/error.hpp"
#include "engine/registry.hpp"
#include "policies/heat/heat_predictor.hpp"
#include "policies/heat/policy_spec.hpp"

namespace eplab {
namespace {

class Base : public HeatPredictor {
 public:
  explicit Base(std::string name) : name_(std::move(name)) {}
  std::string name() const override { return name_; }
  void observe(const std::vector<double>& load) override {
    if (experts_ < 0) experts_ = static_cast<int>(load.size());
    if (static_cast<int>(load.size()) != experts_)
      throw EplabError("heat predictor '" + name_ + "': observed " + std::to_string(load.size()) +
                       " expert loads after " + std::to_string(experts_) + " earlier");
    update(load);
  }

 protected:
  virtual void update(const std::vector<double>& load) = 0;
  int experts_ = -1;

 private:
  std::string name_;
};

class LastValue : public Base {
 public:
  LastValue() : Base("last") {}
  std::vector<double> predict() const override { return last_; }

 protected:
  void update(const std::vector<double>& load) override { last_ = load; }

 private:
  std::vector<double> last_;
};

// s = alpha * x + (1 - alpha) * s, seeded with the first observation so early forecasts are not biased to 0.
class Ema : public Base {
 public:
  Ema(std::string name, double alpha) : Base(std::move(name)), alpha_(alpha) {}
  std::vector<double> predict() const override { return s_; }

 protected:
  void update(const std::vector<double>& load) override {
    if (s_.empty()) {
      s_ = load;
      return;
    }
    for (size_t e = 0; e < s_.size(); ++e) s_[e] = alpha_ * load[e] + (1 - alpha_) * s_[e];
  }

 private:
  double alpha_;
  std::vector<double> s_;
};

// Mean of the last W observations (fewer while the history is shorter).
class Window : public Base {
 public:
  Window(std::string name, int w) : Base(std::move(name)), w_(w) {}
  std::vector<double> predict() const override {
    if (hist_.empty()) return {};
    std::vector<double> m(hist_.front().size(), 0.0);
    for (const auto& h : hist_)
      for (size_t e = 0; e < m.size(); ++e) m[e] += h[e];
    for (double& v : m) v /= static_cast<double>(hist_.size());
    return m;
  }

 protected:
  void update(const std::vector<double>& load) override {
    hist_.push_back(load);
    if (static_cast<int>(hist_.size()) > w_) hist_.pop_front();
  }

 private:
  int w_;
  std::deque<std::vector<double>> hist_;
};

// Holt's linear trend: level l and trend b. First observation: l = x, b = 0. Then
//   l' = alpha * x + (1 - alpha) * (l + b);  b' = beta * (l' - l) + (1 - beta) * b.
// Forecast l + b, clamped at 0 because a load cannot be negative (a falling expert would otherwise be
// forecast below zero and distort the balancer's totals).
class Trend : public Base {
 public:
  Trend(std::string name, double alpha, double beta) : Base(std::move(name)), alpha_(alpha), beta_(beta) {}
  std::vector<double> predict() const override {
    std::vector<double> f(level_.size());
    for (size_t e = 0; e < f.size(); ++e) f[e] = std::max(0.0, level_[e] + trend_[e]);
    return f;
  }

 protected:
  void update(const std::vector<double>& load) override {
    if (level_.empty()) {
      level_ = load;
      trend_.assign(load.size(), 0.0);
      return;
    }
    for (size_t e = 0; e < level_.size(); ++e) {
      const double l = alpha_ * load[e] + (1 - alpha_) * (level_[e] + trend_[e]);
      trend_[e] = beta_ * (l - level_[e]) + (1 - beta_) * trend_[e];
      level_[e] = l;
    }
  }

 private:
  double alpha_, beta_;
  std::vector<double> level_, trend_;
};

std::string fmt(double v) {
  char buf[32];
  std::snprintf(buf, sizeof(buf), "%g", v);
  return buf;
}

double unit_interval(const PolicySpec& s, const std::string& key, double fallback) {
  const double v = s.number(key, fallback);
  if (!(v > 0 && v <= 1))
    throw EplabError("heat predictor '" + s.text() + "': " + key + " must be in (0, 1], got " + fmt(v));
  return v;
}

}  // namespace

EPLAB_REGISTRY(HeatPredictorMaker, heat_predictor_registry, "heat predictor", r) {
  r.add("last", "the last step's load",
        without_parameters<HeatPredictor>([] { return std::make_unique<LastValue>(); }));
  r.add(
      "ema", "exponential moving average, weight alpha on the newest step (default 0.5)",
      [](const PolicySpec& s) -> std::unique_ptr<HeatPredictor> {
        s.allow_only({"alpha"});
        const double a = unit_interval(s, "alpha", 0.5);
        return std::make_unique<Ema>("ema:alpha=" + fmt(a), a);
      },
      "ema:alpha=A");
  r.add(
      "window", "mean of the last w steps (default 4)",
      [](const PolicySpec& s) -> std::unique_ptr<HeatPredictor> {
        s.allow_only({"w"});
        const int w = s.integer("w", 4, 1, std::numeric_limits<int>::max());
        return std::make_unique<Window>("window:w=" + std::to_string(w), w);
      },
      "window:w=W");
  r.add(
      "trend", "Holt's linear trend: level alpha (default 0.5), trend beta (default 0.3)",
      [](const PolicySpec& s) -> std::unique_ptr<HeatPredictor> {
        s.allow_only({"alpha", "beta"});
        const double a = unit_interval(s, "alpha", 0.5), b = unit_interval(s, "beta", 0.3);
        return std::make_unique<Trend>("trend:alpha=" + fmt(a) + ",beta=" + fmt(b), a, b);
      },
      "trend:alpha=A,beta=B");
}

std::vector<std::string> heat_predictor_names() { return heat_predictor_registry().names(); }

void register_heat_predictor_factory(const std::string& name, HeatPredictorFactory factory) {
  // The driver answers "oracle" itself (the step's own load), so no predictor may take the name.
  if (name == "oracle")
    throw EplabError("heat predictor name 'oracle' is a built-in heat predictor; choose another name");
  if (!factory) throw EplabError("heat predictor name '" + name + "': the factory is empty");
  heat_predictor_registry().add_user(name, without_parameters<HeatPredictor>(std::move(factory)), ":");
}

void unregister_heat_predictor_factory(const std::string& name) { heat_predictor_registry().remove_user(name); }

std::vector<std::string> registered_heat_predictor_factories() { return heat_predictor_registry().user_names(); }

std::unique_ptr<HeatPredictor> create_heat_predictor(const std::string& text) {
  const PolicySpec s("heat predictor", text);
  return heat_predictor_registry().by_name(s.name())(s);
}

void add_expert_load(const RoutingBatch& batch, std::vector<double>& load) {
  for (int32_t e : batch.topk_idx) {
    if (e < 0) continue;
    if (static_cast<size_t>(e) >= load.size())
      throw EplabError("expert load: batch (step " + std::to_string(batch.step) + ", layer " +
                       std::to_string(batch.layer) + ", rank " + std::to_string(batch.src_rank) + ") selects expert " +
                       std::to_string(e) + " but only " + std::to_string(load.size()) + " experts are counted");
    load[e] += 1.0;
  }
}

double forecast_mape(const std::vector<double>& forecast, const std::vector<double>& actual) {
  if (forecast.size() != actual.size())
    throw EplabError("forecast MAPE: " + std::to_string(forecast.size()) + " forecasts for " +
                     std::to_string(actual.size()) + " experts");
  double sum = 0;
  int n = 0;
  for (size_t e = 0; e < actual.size(); ++e) {
    if (actual[e] <= 0) continue;
    sum += std::abs(forecast[e] - actual[e]) / actual[e];
    ++n;
  }
  return n ? 100.0 * sum / n : 0.0;
}

}  // namespace eplab
