#include "policies/heat/policy_spec.hpp"

#include <cmath>
#include <cstdlib>

#include "engine/error.hpp"

namespace eplab {

PolicySpec::PolicySpec(std::string kind, const std::string& text) : kind_(std::move(kind)), text_(text) {
  const size_t colon = text.find(':');
  name_ = text.substr(0, colon);
  if (colon == std::string::npos) return;
  const std::string args = text.substr(colon + 1);
  size_t pos = 0;
  while (pos <= args.size()) {
    size_t comma = args.find(',', pos);
    if (comma == std::string::npos) comma = args.size();
    const std::string item = args.substr(pos, comma - pos);
    const size_t eq = item.find('=');
    if (eq == std::string::npos || eq == 0)
      throw EplabError(kind_ + " '" + text_ + "': parameter '" + item + "' is not key=value");
    kv_[item.substr(0, eq)] = item.substr(eq + 1);
    pos = comma + 1;
  }
}

void PolicySpec::allow_only(const std::vector<std::string>& known) const {
  for (const auto& [k, v] : kv_) {
    bool ok = false;
    for (const auto& n : known) ok = ok || n == k;
    if (!ok)
      throw EplabError(kind_ + " '" + text_ + "': unknown parameter '" + k + "' (known: " + join_names(known) + ")");
  }
}

double PolicySpec::number(const std::string& key, double fallback) const {
  auto it = kv_.find(key);
  if (it == kv_.end()) return fallback;
  char* end = nullptr;
  const double v = std::strtod(it->second.c_str(), &end);
  if (it->second.empty() || *end != '\0' || !std::isfinite(v))
    throw EplabError(kind_ + " '" + text_ + "': parameter '" + key + "' = '" + it->second + "' is not a number");
  return v;
}

int PolicySpec::integer(const std::string& key, int fallback, int lo, int hi) const {
  const double v = number(key, fallback);
  if (v < lo || v > hi || v != std::floor(v))
    throw EplabError(kind_ + " '" + text_ + "': parameter '" + key + "' = '" + kv_.at(key) +
                     "' must be a whole number in [" + std::to_string(lo) + ", " + std::to_string(hi) + "]");
  return static_cast<int>(v);
}

std::string PolicySpec::string(const std::string& key, const std::string& fallback) const {
  auto it = kv_.find(key);
  return it == kv_.end() ? fallback : it->second;
}

std::string join_names(const std::vector<std::string>& names) {
  std::string s;
  for (size_t i = 0; i < names.size(); ++i) s += (i ? ", " : "") + names[i];
  return s;
}

}  // namespace eplab
