#include "traces/routing_source.hpp"

#include "engine/error.hpp"
#include "policies/routing/router.hpp"
#include "traces/generators.hpp"
#include "traces/trace_file.hpp"

namespace eplab {

std::vector<std::string> routing_spec_names() {
  return {"uniform",
          "deepep",
          "zipf:S",
          "hotset:k=K,frac=F,every=N",
          "correlated:rho=R",
          "trace:PATH",
          "router:node-limited,m=M|bias,gamma=G"};
}

std::unique_ptr<RoutingSource> make_routing(const std::string& spec, const RoutingParams& params) {
  if (spec.rfind("trace:", 0) == 0) {
    const std::string path = spec.substr(6);
    if (path.empty()) throw EplabError("routing 'trace:': missing the file name (expected trace:PATH)");
    return open_trace(path, params);
  }
  if (spec.rfind("router:", 0) == 0) return make_router_source(spec.substr(7), params);
  if (auto g = make_generator(spec, params)) return g;
  std::string known;
  for (auto& n : routing_spec_names()) known += (known.empty() ? "" : ", ") + n;
  throw EplabError("unknown routing '" + spec + "' (known: " + known + ")");
}

}  // namespace eplab
