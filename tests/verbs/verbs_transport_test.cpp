// `--transport` on --backend=mpi: mpi (the default) and verbs, the verbs transport refused where it was not built,
// any other name refused naming the valid ones.
#include "verbs/verbs_transport.hpp"

#include <gtest/gtest.h>

#include <string>

#include "engine/error.hpp"

namespace eplab::verbs {
namespace {

TEST(MpiTransport, NamesAreParsedAndRefusalsSayWhy) {
  EXPECT_EQ(parse_mpi_transport("", true), MpiTransport::kMpi);
  EXPECT_EQ(parse_mpi_transport("mpi", false), MpiTransport::kMpi);
  EXPECT_EQ(parse_mpi_transport("verbs", true), MpiTransport::kVerbs);
  try {
    parse_mpi_transport("verbs", false);
    ADD_FAILURE() << "verbs accepted where it was not built";
  } catch (const EplabError& e) {
    EXPECT_NE(std::string(e.what()).find("this build has no verbs transport"), std::string::npos) << e.what();
    EXPECT_NE(std::string(e.what()).find("-DEPLAB_WITH_VERBS=ON"), std::string::npos) << e.what();
  }
  try {
    parse_mpi_transport("nccl", true);
    ADD_FAILURE() << "nccl accepted on mpi";
  } catch (const EplabError& e) {
    EXPECT_NE(std::string(e.what()).find("--transport 'nccl': backend 'mpi' has mpi"), std::string::npos) << e.what();
    EXPECT_NE(std::string(e.what()).find("and verbs"), std::string::npos) << e.what();
  }
}

}  // namespace
}  // namespace eplab::verbs
