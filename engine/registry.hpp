// One name registry for every kind of plugin: backends, algorithms, codecs, balancers, heat predictors, replica
// selectors and routers. After SimGrid's ModuleGroup: add() registers a built-in with a one-line help, by_name()
// finds one (an unknown name lists the known ones), names() and help() list them. Entries registered at run time
// (Python subclasses) sit beside the built-ins and may not shadow them.
//
// EPLAB_REGISTRY defines a registry's accessor together with the block that adds its built-ins, run on first use.
// Built-ins are never added by static registrar objects spread over source files: those files live in static
// libraries, and the linker drops an object file nothing references, registrar and all.
#pragma once

#include <algorithm>
#include <mutex>
#include <optional>
#include <string>
#include <vector>

#include "engine/error.hpp"

namespace eplab {

template <class Factory>
class Registry {
 public:
  struct Entry {
    std::string name;
    std::string usage;  // the spec syntax lists and errors show, e.g. "ema:alpha=A" (the name when it takes none)
    std::string help;   // one line; for a built-in this build left out, how to enable it
    Factory factory;    // empty for a built-in this build left out
    bool builtin = true;
  };

  // `kind` ("backend", "codec", ...) labels errors and help; `populate` adds the built-ins.
  Registry(std::string kind, void (*populate)(Registry&)) : kind_(std::move(kind)) { populate(*this); }
  Registry(const Registry&) = delete;
  Registry& operator=(const Registry&) = delete;

  const std::string& kind() const { return kind_; }

  void add(const std::string& name, const std::string& help, Factory factory, const std::string& usage = "") {
    std::lock_guard<std::mutex> lock(mu_);
    if (locate(name)) throw EplabError(kind_ + " '" + name + "' is registered twice");
    entries_.push_back({name, usage.empty() ? name : usage, help, std::move(factory), true});
  }

  // A built-in this build left out: by_name() says how to enable it instead of calling it unknown.
  void add_missing(const std::string& name, const std::string& how_to_enable) { add(name, how_to_enable, {}); }

  // A run-time entry (a Python subclass). Registering a name again replaces its factory; a built-in's name, an
  // empty name or one holding any of `forbidden_chars` (the spec syntax's separators) is refused.
  void add_user(const std::string& name, Factory factory, const std::string& forbidden_chars) {
    if (name.empty() || name.find_first_of(forbidden_chars) != std::string::npos)
      throw EplabError(kind_ + " name '" + name + "': a registered " + kind_ + " needs a non-empty name without '" +
                       forbidden_chars + "'");
    if (!factory) throw EplabError(kind_ + " name '" + name + "': the factory is empty");
    std::lock_guard<std::mutex> lock(mu_);
    if (Entry* e = locate(name)) {
      if (e->builtin) throw EplabError(kind_ + " name '" + name + "' is a built-in " + kind_ + "; choose another name");
      e->factory = std::move(factory);
      return;
    }
    entries_.push_back({name, name, "registered at run time", std::move(factory), false});
  }

  void remove_user(const std::string& name) {
    std::lock_guard<std::mutex> lock(mu_);
    std::erase_if(entries_, [&](const Entry& e) { return !e.builtin && e.name == name; });
  }

  // The factory of `name`, copied out so that callers run it without the lock (a factory may run user code that
  // itself looks up plugins). Throws EplabError listing the known usages, or saying how to enable a built-in this
  // build left out.
  Factory by_name(const std::string& name) const {
    std::lock_guard<std::mutex> lock(mu_);
    const Entry* e = locate(name);
    if (!e) throw EplabError("unknown " + kind_ + " '" + name + "' (known: " + known_locked() + ")");
    if (!e->factory) throw EplabError(kind_ + " '" + name + "' is not built in: " + e->help);
    return e->factory;
  }

  // The factory of `name`, or nothing when no entry this build has is called so.
  std::optional<Factory> find(const std::string& name) const {
    std::lock_guard<std::mutex> lock(mu_);
    const Entry* e = locate(name);
    if (!e || !e->factory) return std::nullopt;
    return e->factory;
  }

  // Built-ins this build has, in registration order.
  std::vector<std::string> names() const {
    return select([](const Entry& e) { return e.builtin && e.factory; });
  }
  // Run-time entries, sorted.
  std::vector<std::string> user_names() const {
    std::vector<std::string> out = select([](const Entry& e) { return !e.builtin; });
    std::sort(out.begin(), out.end());
    return out;
  }

  std::vector<Entry> entries() const {
    std::lock_guard<std::mutex> lock(mu_);
    return entries_;
  }

  // One line per entry: its usage and help, a left-out built-in marked so.
  std::string help() const {
    std::lock_guard<std::mutex> lock(mu_);
    // Help aligns after the usages, except that a usage too long to share its line puts the help on the next.
    constexpr size_t kMaxWidth = 30;
    size_t width = 0;
    for (const Entry& e : entries_)
      if (e.usage.size() <= kMaxWidth) width = std::max(width, e.usage.size());
    std::string out;
    for (const Entry& e : entries_) {
      out += "  " + e.usage;
      out +=
          e.usage.size() <= width ? std::string(width - e.usage.size() + 2, ' ') : "\n" + std::string(width + 4, ' ');
      out += e.factory ? e.help : "(not built in) " + e.help;
      out += '\n';
    }
    return out;
  }

  // "a, b:k=V, c (not built)": what an error lists.
  std::string known() const {
    std::lock_guard<std::mutex> lock(mu_);
    return known_locked();
  }

 private:
  Entry* locate(const std::string& name) {
    for (Entry& e : entries_)
      if (e.name == name) return &e;
    return nullptr;
  }
  const Entry* locate(const std::string& name) const { return const_cast<Registry*>(this)->locate(name); }

  template <class Pred>
  std::vector<std::string> select(Pred pred) const {
    std::lock_guard<std::mutex> lock(mu_);
    std::vector<std::string> out;
    for (const Entry& e : entries_)
      if (pred(e)) out.push_back(e.name);
    return out;
  }

  std::string known_locked() const {
    std::string out;
    for (const Entry& e : entries_) out += (out.empty() ? "" : ", ") + e.usage + (e.factory ? "" : " (not built)");
    return out;
  }

  std::string kind_;
  mutable std::mutex mu_;
  std::vector<Entry> entries_;
};

}  // namespace eplab

// Defines `Registry<Factory>& accessor()` and opens the body of the function that adds its built-ins, which sees
// the registry as `reg`:
//   EPLAB_REGISTRY(AlgorithmFactory, algorithm_registry, "algorithm", r) { r.add("flat", "...", make_flat); }
#define EPLAB_REGISTRY(Factory, accessor, kind, reg)                                 \
  static void accessor##_builtins(::eplab::Registry<Factory>& reg);                  \
  ::eplab::Registry<Factory>& accessor() {                                           \
    static ::eplab::Registry<Factory> registry_instance(kind, &accessor##_builtins); \
    return registry_instance;                                                        \
  }                                                                                  \
  static void accessor##_builtins(::eplab::Registry<Factory>& reg)
