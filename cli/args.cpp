#include "cli/args.hpp"

#include <unistd.h>

#include <cmath>
#include <cstdio>
#include <iostream>
#include <limits>
#include <sstream>

#include "engine/error.hpp"

namespace eplab::cli {

std::map<std::string, Command>& commands() {
  static std::map<std::string, Command> c;
  return c;
}

Args& Args::add(const std::string& name, Opt o) {
  order_.push_back(name);
  opts_[name] = std::move(o);
  return *this;
}

Args& Args::opt(const std::string& name, std::string* t, const std::string& help) {
  return add(name, {help, t->empty() ? "" : *t, false, [t](const std::string& v) { *t = v; }});
}

Args& Args::opt(const std::string& name, int* t, const std::string& help) {
  return add(name, {help, std::to_string(*t), false, [t, name](const std::string& v) {
                      size_t pos = 0;
                      long x = 0;
                      try {
                        x = std::stol(v, &pos);
                      } catch (...) {
                        pos = 0;
                      }
                      if (pos != v.size() || v.empty())
                        throw EplabError("--" + name + " expects a whole number, got '" + v + "'");
                      // Checked before narrowing: 4294967297 must not become 1.
                      if (x < std::numeric_limits<int>::min() || x > std::numeric_limits<int>::max())
                        throw EplabError("--" + name + " expects a whole number in [" +
                                         std::to_string(std::numeric_limits<int>::min()) + ", " +
                                         std::to_string(std::numeric_limits<int>::max()) + "], got '" + v + "'");
                      *t = static_cast<int>(x);
                    }});
}

Args& Args::opt(const std::string& name, uint64_t* t, const std::string& help) {
  return add(name, {help, std::to_string(*t), false, [t, name](const std::string& v) {
                      size_t pos = 0;
                      unsigned long long x = 0;
                      try {
                        x = std::stoull(v, &pos);
                      } catch (...) {
                        pos = 0;
                      }
                      if (pos != v.size() || v.empty() || v[0] == '-')
                        throw EplabError("--" + name + " expects a non-negative whole number, got '" + v + "'");
                      *t = x;
                    }});
}

Args& Args::opt(const std::string& name, double* t, const std::string& help) {
  std::ostringstream d;
  d << *t;
  return add(name, {help, d.str(), false, [t, name](const std::string& v) {
                      size_t pos = 0;
                      double x = 0;
                      try {
                        x = std::stod(v, &pos);
                      } catch (...) {
                        pos = 0;
                      }
                      if (pos != v.size() || v.empty())
                        throw EplabError("--" + name + " expects a number, got '" + v + "'");
                      if (!std::isfinite(x))
                        throw EplabError("--" + name + " expects a finite number, got '" + v + "'");
                      *t = x;
                    }});
}

Args& Args::opt(const std::string& name, std::function<void(const std::string&)> set, const std::string& default_text,
                const std::string& help) {
  return add(name, {help, default_text, false, std::move(set)});
}

Args& Args::flag(const std::string& name, bool* t, const std::string& help) {
  return add(name, {help, "", true, [t](const std::string&) { *t = true; }});
}

bool Args::parse(const std::vector<std::string>& argv) {
  for (size_t i = 0; i < argv.size(); ++i) {
    const std::string& a = argv[i];
    if (a == "--help" || a == "-h") {
      std::cout << help();
      return false;
    }
    if (a.rfind("--", 0) != 0 || a == "--") {
      if (positional_.size() == max_positional_) throw UsageError("unexpected argument '" + a + "' (see --help)");
      positional_.push_back(a);
      continue;
    }
    std::string name = a.substr(2), value;
    bool has_value = false;
    if (auto eq = name.find('='); eq != std::string::npos) {
      value = name.substr(eq + 1);
      name = name.substr(0, eq);
      has_value = true;
    }
    auto it = opts_.find(name);
    if (it == opts_.end()) throw UsageError("unknown option --" + name + " (see --help)");
    if (it->second.is_flag) {
      if (has_value) throw UsageError("--" + name + " takes no value");
    } else if (!has_value) {
      if (i + 1 >= argv.size()) throw UsageError("--" + name + " needs a value");
      value = argv[++i];
    }
    it->second.set(value);
    given_[name] = true;
  }
  return true;
}

std::string Args::help() const {
  std::ostringstream os;
  os << "usage: " << usage_ << "\n\n" << summary_ << "\n\noptions:\n";
  for (auto& n : order_) {
    const Opt& o = opts_.at(n);
    std::string left = "  --" + n + (o.is_flag ? "" : " VALUE");
    os << left;
    if (left.size() < 28)
      os << std::string(28 - left.size(), ' ');
    else
      os << "\n" << std::string(28, ' ');
    os << o.help;
    if (!o.is_flag && !o.default_text.empty()) os << " (default: " << o.default_text << ")";
    os << "\n";
  }
  os << "  --help                    this text\n";
  return os.str();
}

Progress::Progress(std::string what, bool quiet) : what_(std::move(what)), enabled_(!quiet && isatty(2)) {}

void Progress::update(int done, int total) {
  if (!enabled_) return;
  std::fprintf(stderr, "\r%s %d/%d (%.0f%%)", what_.c_str(), done, total, total ? 100.0 * done / total : 100.0);
  std::fflush(stderr);
  shown_ = true;
}

void Progress::finish() {
  if (shown_) std::fprintf(stderr, "\r\033[K");
  shown_ = false;
}

}  // namespace eplab::cli
