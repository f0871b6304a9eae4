// Tables of named, typed, checked fields over a struct, read from and written to JSON by the same generic code:
// cluster and model files (engine/spec_json.cpp) and run configurations (driver/run_options.cpp). Errors name the
// source and the field and say what was expected.
#pragma once

#include <cmath>
#include <cstdio>
#include <fstream>
#include <functional>
#include <iterator>
#include <limits>
#include <nlohmann/json.hpp>
#include <string>
#include <type_traits>
#include <utility>
#include <vector>

#include "engine/error.hpp"

namespace eplab::fields {

using nlohmann::json;

// The values a number field accepts: above `lo` (or at it, when closed) and at most `hi`.
struct Range {
  double lo;
  bool lo_open;
  double hi = std::numeric_limits<double>::infinity();

  bool holds(double v) const { return (lo_open ? v > lo : v >= lo) && v <= hi; }
  std::string text() const {
    auto num = [](double v) {
      char buf[32];
      std::snprintf(buf, sizeof buf, "%g", v);
      return std::string(buf);
    };
    if (std::isinf(hi)) return (lo_open ? "> " : ">= ") + num(lo);
    return std::string("in ") + (lo_open ? "(" : "[") + num(lo) + ", " + num(hi) + "]";
  }
};
inline constexpr Range kAny{-std::numeric_limits<double>::infinity(), false};
inline constexpr Range kPositive{0, true};
inline constexpr Range kNonNegative{0, false};
inline constexpr Range kAtLeastOne{1, false};
inline constexpr Range kFraction{0, true, 1};

enum class Type { kString, kInteger, kNumber, kBoolean, kStringList };

template <class S>
struct Field {
  std::string key;
  Type type;
  std::function<json(const S&)> get;
  // Throws EplabError beginning with `where` ("cluster file 'a.json': field 'nodes'") when the value does not fit.
  std::function<void(S&, const json&, const std::string& where)> set;
};

[[noreturn]] inline void bad_value(const std::string& where, const std::string& expected, const json& got) {
  // dump() writes inf and NaN as null: name them as they were given. Text from a command line need not be UTF-8,
  // which plain dump() refuses by throwing: the message shows such bytes as U+FFFD instead.
  std::string text = got.dump(-1, ' ', false, json::error_handler_t::replace);
  if (got.is_number_float() && !std::isfinite(got.get<double>())) {
    const double x = got.get<double>();
    text = std::isnan(x) ? "nan" : x > 0 ? "inf" : "-inf";
  }
  throw EplabError(where + ": expected " + expected + ", got " + text);
}

// Fields reach their value through `at`, a callable taking the struct (const or not) and returning a reference,
// so a nested value such as a cluster's GPU SM count is a field like any other.
template <class M>
auto member(M m) {
  return [m](auto& s) -> auto& { return s.*m; };
}

// An integer field of any integer type (int, uint64_t), within `r` and the type's own range.
template <class S, class At>
Field<S> integer(std::string key, At at, Range r) {
  using T = std::remove_reference_t<decltype(at(std::declval<S&>()))>;
  return {key, Type::kInteger, [at](const S& s) { return json(at(s)); },
          [at, r](S& s, const json& v, const std::string& where) {
            // The type's own range bounds the value before it is narrowed (4294967297 never becomes 1), and an
            // error then names the whole allowed range.
            using L = std::numeric_limits<T>;
            bool in_type = false;
            if (v.is_number_unsigned())
              in_type = v.get<uint64_t>() <= static_cast<uint64_t>(L::max());
            else if (v.is_number_integer())
              in_type = v.get<int64_t>() >= static_cast<int64_t>(L::lowest()) &&
                        (!std::is_signed_v<T> || v.get<int64_t>() <= static_cast<int64_t>(L::max()));
            else if (v.is_number_float())
              in_type = v.get<double>() >= static_cast<double>(L::lowest()) &&
                        v.get<double>() < static_cast<double>(L::max());
            if (v.is_number() && !in_type) {
              const std::string lo = r.lo > static_cast<double>(L::lowest())
                                         ? std::to_string(static_cast<long long>(r.lo))
                                         : std::to_string(L::lowest());
              const std::string hi = r.hi < static_cast<double>(L::max()) ? std::to_string(static_cast<long long>(r.hi))
                                                                          : std::to_string(L::max());
              bad_value(where, "an integer in [" + lo + ", " + hi + "]", v);
            }
            if (!v.is_number_integer() || !r.holds(v.get<double>()))
              bad_value(where, r.lo == kAny.lo ? std::string("an integer") : "an integer " + r.text(), v);
            at(s) = v.get<T>();
          }};
}

template <class S, class At>
Field<S> real(std::string key, At at, Range r) {
  return {key, Type::kNumber, [at](const S& s) { return json(at(s)); },
          [at, r](S& s, const json& v, const std::string& where) {
            // Finite only: JSON cannot hold inf or NaN, so a configuration that took one could not be written back.
            if (v.is_number() && !std::isfinite(v.get<double>())) bad_value(where, "a finite number " + r.text(), v);
            if (!v.is_number() || !r.holds(v.get<double>())) bad_value(where, "a number " + r.text(), v);
            at(s) = v.get<double>();
          }};
}

template <class S, class At>
Field<S> boolean(std::string key, At at) {
  return {key, Type::kBoolean, [at](const S& s) { return json(at(s)); },
          [at](S& s, const json& v, const std::string& where) {
            if (!v.is_boolean()) bad_value(where, "true or false", v);
            at(s) = v.get<bool>();
          }};
}

// A string, checked by `check` (which throws with its own reason) when given.
template <class S, class At>
Field<S> text(std::string key, At at, std::function<void(const std::string&)> check = {}) {
  return {key, Type::kString, [at](const S& s) { return json(at(s)); },
          [at, check](S& s, const json& v, const std::string& where) {
            if (!v.is_string()) bad_value(where, "a string", v);
            if (check) {
              try {
                check(v.get<std::string>());
              } catch (const EplabError& e) {
                throw EplabError(where + ": " + e.what());
              }
            }
            at(s) = v.get<std::string>();
          }};
}

// A list of strings (a repeatable option such as --fault), each checked by `check` when given. A single string
// stands for a one-element list, so a config file or keyword argument may give one value without brackets.
template <class S, class At>
Field<S> string_list(std::string key, At at, std::function<void(const std::string&)> check = {}) {
  return {key, Type::kStringList, [at](const S& s) { return json(at(s)); },
          [at, check](S& s, const json& v, const std::string& where) {
            std::vector<std::string> items;
            if (v.is_string()) {
              items.push_back(v.get<std::string>());
            } else if (v.is_array()) {
              for (const json& e : v) {
                if (!e.is_string()) bad_value(where, "a string or a list of strings", v);
                items.push_back(e.get<std::string>());
              }
            } else {
              bad_value(where, "a string or a list of strings", v);
            }
            if (check)
              for (const std::string& item : items) {
                try {
                  check(item);
                } catch (const EplabError& e) {
                  throw EplabError(where + ": " + e.what());
                }
              }
            at(s) = std::move(items);
          }};
}

// One of a few names, each standing for a value of `E`.
template <class S, class E>
Field<S> choice(std::string key, E S::*m, std::vector<std::pair<E, std::string>> names) {
  return {key, Type::kString,
          [m, names](const S& s) {
            for (const auto& [e, n] : names)
              if (s.*m == e) return json(n);
            return json(nullptr);
          },
          [m, names](S& s, const json& v, const std::string& where) {
            std::string known;
            for (const auto& [e, n] : names) {
              if (v.is_string() && v.get<std::string>() == n) {
                s.*m = e;
                return;
              }
              known += (known.empty() ? "\"" : " or \"") + n + "\"";
            }
            bad_value(where, known, v);
          }};
}

template <class S>
json to_json(const S& s, const std::vector<Field<S>>& fields) {
  json j = json::object();
  for (const auto& f : fields) j[f.key] = f.get(s);
  return j;
}

// What read() accepts beside the fields.
struct ReadRules {
  bool require_all = false;             // a missing field is an error...
  std::string missing_hint;             // ...whose message ends with this
  std::vector<std::string> extra_keys;  // keys the caller handles itself
  std::string noun = "field";           // what errors call a key ("option" for run configurations)
};

// Sets the fields `j` gives onto `s`. `j` must be an object; a key that is neither a field nor an extra key is an
// error, and so is a missing field when the rules require all.
template <class S>
void read(const json& j, const std::string& source, const std::vector<Field<S>>& fields, S& s, const ReadRules& rules) {
  if (!j.is_object()) throw EplabError(source + ": expected a JSON object, got " + j.dump());
  std::string known;
  for (const auto& k : rules.extra_keys) known += (known.empty() ? "" : ", ") + k;
  for (const auto& f : fields) known += (known.empty() ? "" : ", ") + f.key;
  for (const auto& [key, value] : j.items()) {
    bool ok = false;
    for (const auto& k : rules.extra_keys) ok = ok || k == key;
    for (const auto& f : fields) ok = ok || f.key == key;
    if (!ok) throw EplabError(source + ": unknown " + rules.noun + " '" + key + "' (known: " + known + ")");
  }
  for (const auto& f : fields) {
    if (j.contains(f.key))
      f.set(s, j[f.key], source + ": " + rules.noun + " '" + f.key + "'");
    else if (rules.require_all)
      throw EplabError(source + ": missing " + rules.noun + " '" + f.key + "'" + rules.missing_hint);
  }
}

inline json parse(const std::string& text, const std::string& source) {
  try {
    return json::parse(text);
  } catch (const json::parse_error& e) {
    throw EplabError(source + ": not valid JSON: " + e.what());
  }
}

// `source` names the file in errors ("cluster file 'a.json'").
inline json parse_file(const std::string& path, const std::string& source) {
  std::ifstream in(path);
  if (!in) throw EplabError("cannot read " + source);
  return parse(std::string(std::istreambuf_iterator<char>(in), std::istreambuf_iterator<char>()), source);
}

}  // namespace eplab::fields
