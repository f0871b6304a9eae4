// The message of the EplabError a call throws ("" when it throws none), for tests that check error text.
#pragma once

#include <functional>
#include <string>

#include "engine/error.hpp"

namespace eplab {

inline std::string error_of(const std::function<void()>& f) {
  try {
    f();
  } catch (const EplabError& e) {
    return e.what();
  }
  return "";
}

}  // namespace eplab
