# Message sizes on the mpi backend: through MPI against single copy, to place single copy's threshold.
if(TARGET eplab_mpi)
  add_executable(bench_mpi_message_sizes ${CMAKE_CURRENT_SOURCE_DIR}/mpi_message_sizes.cpp)
  target_link_libraries(bench_mpi_message_sizes PRIVATE eplab eplab_warnings)
endif()

# Copying rows out of another process's memory: process_vm_readv against memcpy from a shared mapping (no MPI, no
# eplab code; what a transport between processes of one machine could reach).
add_executable(bench_cross_process_copy ${CMAKE_CURRENT_SOURCE_DIR}/cross_process_copy.cpp)
target_link_libraries(bench_cross_process_copy PRIVATE eplab_warnings)
set_target_properties(bench_cross_process_copy PROPERTIES RUNTIME_OUTPUT_DIRECTORY ${CMAKE_BINARY_DIR}/bin)
