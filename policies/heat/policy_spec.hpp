// Parsing of policy specs shared by the heat, balance and replica registries: "name" or
// "name:key=value,key=value". Errors name the spec, the key and what was expected.
#pragma once

#include <functional>
#include <map>
#include <memory>
#include <string>
#include <vector>

namespace eplab {

class PolicySpec {
 public:
  // `kind` ("heat predictor", "balancer", ...) only labels error messages.
  PolicySpec(std::string kind, const std::string& text);

  const std::string& name() const { return name_; }
  const std::string& text() const { return text_; }
  // Throws EplabError if any key outside `known` was given: a typo must not silently fall back to a default.
  void allow_only(const std::vector<std::string>& known) const;
  double number(const std::string& key, double fallback) const;
  // A whole number in [lo, hi], checked before it is narrowed to int: "w=1e12" or "groups=2.5" is an error naming
  // the spec, the key and the range, never a wrapped or truncated value.
  int integer(const std::string& key, int fallback, int lo, int hi) const;
  std::string string(const std::string& key, const std::string& fallback) const;

 private:
  std::string kind_, text_, name_;
  std::map<std::string, std::string> kv_;
};

// A registry entry (a maker from a parsed spec) for a policy that takes no parameters: built-ins such as `none`,
// and every policy registered at run time.
template <class T>
std::function<std::unique_ptr<T>(const PolicySpec&)> without_parameters(std::function<std::unique_ptr<T>()> make) {
  return [make = std::move(make)](const PolicySpec& s) -> std::unique_ptr<T> {
    s.allow_only({});
    return make();
  };
}

// "a, b, c" for error messages listing known names.
std::string join_names(const std::vector<std::string>& names);

}  // namespace eplab
