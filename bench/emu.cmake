add_executable(bench_emu_throughput ${CMAKE_CURRENT_SOURCE_DIR}/emu_throughput.cpp)
target_link_libraries(bench_emu_throughput PRIVATE eplab eplab_warnings)
set_target_properties(bench_emu_throughput PROPERTIES RUNTIME_OUTPUT_DIRECTORY ${CMAKE_BINARY_DIR}/bin)
# The benchmark launches the eplab command (mpi backend) and the MPI_Alltoallv baseline from its own directory.
add_dependencies(bench_emu_throughput eplab_cli)

# The baseline is plain C against the system MPI, independent of eplab's mpi backend; without an MPI C compiler
# wrapper the benchmark reports that row as not run.
check_language(C)
if(CMAKE_C_COMPILER)
  enable_language(C)
  find_package(MPI QUIET COMPONENTS C)
endif()
if(MPI_C_FOUND)
  add_executable(bench_mpi_alltoallv ${CMAKE_CURRENT_SOURCE_DIR}/mpi_alltoallv.c)
  target_link_libraries(bench_mpi_alltoallv PRIVATE MPI::MPI_C)
  set_target_properties(bench_mpi_alltoallv PROPERTIES C_STANDARD 11 C_STANDARD_REQUIRED ON RUNTIME_OUTPUT_DIRECTORY
                                                       ${CMAKE_BINARY_DIR}/bin)
  target_compile_options(bench_mpi_alltoallv PRIVATE -Wall -Wextra $<$<BOOL:${EPLAB_WERROR}>:-Werror>)
  add_dependencies(bench_emu_throughput bench_mpi_alltoallv)
endif()

# Soak: 10,000 emulated steps in one process, memory sampled per segment.
add_executable(bench_emu_soak ${CMAKE_CURRENT_SOURCE_DIR}/emu_soak.cpp)
target_link_libraries(bench_emu_soak PRIVATE eplab eplab_warnings)
set_target_properties(bench_emu_soak PROPERTIES RUNTIME_OUTPUT_DIRECTORY ${CMAKE_BINARY_DIR}/bin)
