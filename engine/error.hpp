// One error type for everything a user can get wrong (bad input, unknown names) and one for fabric failures.
// Messages carry the context: which input, which field, which rank/peer/phase, what was expected.
#pragma once

#include <stdexcept>
#include <string>

namespace eplab {

class EplabError : public std::runtime_error {
 public:
  using std::runtime_error::runtime_error;
};

class FabricError : public EplabError {
 public:
  using EplabError::EplabError;
};

}  // namespace eplab
