#include "engine/backend.hpp"

#include <map>
#include <mutex>
#include <sstream>

#include "engine/error.hpp"

namespace eplab {
namespace {

struct Registry {
  std::mutex mu;
  std::map<std::string, BackendFactory> built;
  std::map<std::string, std::string> missing;
};

Registry& registry() {
  static Registry r;
  return r;
}

}  // namespace

void register_backend(const std::string& name, BackendFactory factory) {
  auto& r = registry();
  std::lock_guard<std::mutex> lock(r.mu);
  r.built[name] = std::move(factory);
  r.missing.erase(name);
}

void register_missing_backend(const std::string& name, const std::string& how_to_enable) {
  auto& r = registry();
  std::lock_guard<std::mutex> lock(r.mu);
  if (!r.built.count(name)) r.missing[name] = how_to_enable;
}

std::unique_ptr<Backend> create_backend(const std::string& name) {
  register_builtin_backends();
  auto& r = registry();
  BackendFactory f;
  {
    std::lock_guard<std::mutex> lock(r.mu);
    if (auto it = r.built.find(name); it != r.built.end()) {
      f = it->second;
    } else if (auto m = r.missing.find(name); m != r.missing.end()) {
      throw EplabError("backend '" + name + "' is not built in: " + m->second);
    } else {
      std::ostringstream os;
      os << "unknown backend '" << name << "' (built in:";
      for (auto& [n, _] : r.built) os << ' ' << n;
      for (auto& [n, _] : r.missing) os << ' ' << n << "(not built)";
      os << ')';
      throw EplabError(os.str());
    }
  }
  return f();
}

std::vector<std::string> backend_names() {
  register_builtin_backends();
  auto& r = registry();
  std::lock_guard<std::mutex> lock(r.mu);
  std::vector<std::string> out;
  for (auto& [n, _] : r.built) out.push_back(n);
  return out;
}

}  // namespace eplab
