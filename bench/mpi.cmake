# Message sizes on the mpi backend: through MPI against single copy, to place single copy's threshold.
if(TARGET eplab_mpi)
  add_executable(bench_mpi_message_sizes ${CMAKE_CURRENT_SOURCE_DIR}/mpi_message_sizes.cpp)
  target_link_libraries(bench_mpi_message_sizes PRIVATE eplab eplab_warnings)
endif()
