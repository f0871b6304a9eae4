// Expert-heat predictors: forecast each expert's load (token selections) for the next step from the loads
// measured so far. A balancer places experts from the forecast; `eplab heat eval` scores the forecast.
#pragma once

#include <functional>
#include <memory>
#include <string>
#include <vector>

#include "engine/registry.hpp"
#include "engine/routing.hpp"
#include "policies/heat/policy_spec.hpp"

namespace eplab {

class HeatPredictor {
 public:
  virtual ~HeatPredictor() = default;
  virtual std::string name() const = 0;
  // Feeds one step's measured per-expert load. The expert count is fixed by the first call.
  virtual void observe(const std::vector<double>& load) = 0;
  // The forecast for the step after the last observed one; empty before any observation (the caller decides
  // what to do without history, e.g. keep the static placement).
  virtual std::vector<double> predict() const = 0;
};

// Specs: last | ema:alpha=A | window:w=W | trend:alpha=A,beta=B (Holt's linear trend).
// Throws EplabError naming the spec and listing the known names, or naming a malformed parameter.
std::unique_ptr<HeatPredictor> create_heat_predictor(const std::string& spec);
std::vector<std::string> heat_predictor_names();

// The heat predictor registry (engine/registry.hpp): each entry builds a predictor from its parsed spec.
using HeatPredictorMaker = std::function<std::unique_ptr<HeatPredictor>(const PolicySpec&)>;
Registry<HeatPredictorMaker>& heat_predictor_registry();

// Predictors supplied at run time (Python subclasses of eplab.HeatPredictor): create_heat_predictor(name) with
// exactly this name calls the factory before any spec parsing; the engine creates one per layer, so a factory
// returns a fresh predictor each call. Registering a name again replaces its factory; built-in names (last, ema,
// window, trend, and oracle, which the driver reserves) cannot be shadowed and a name holds no ':'.
using HeatPredictorFactory = std::function<std::unique_ptr<HeatPredictor>()>;
void register_heat_predictor_factory(const std::string& name, HeatPredictorFactory factory);
void unregister_heat_predictor_factory(const std::string& name);
std::vector<std::string> registered_heat_predictor_factories();

// Adds one batch's selections per expert to `load` (sized num_experts); ids of -1 are skipped.
void add_expert_load(const RoutingBatch& batch, std::vector<double>& load);

// Mean absolute percentage error of `forecast` against `actual` over experts with actual load > 0, in percent
// (experts with no load have no defined percentage error).
double forecast_mape(const std::vector<double>& forecast, const std::vector<double>& actual);

}  // namespace eplab
