# Simulator benchmarks: calibration against DeepEP's published figures, simulator speed and memory, the
# low-latency table, and recovery from a failed GPU. Built only with the sim backend.
if(EPLAB_WITH_SIMGRID AND TARGET eplab_sim)
  foreach(b sim_calibrate sim_speed sim_low_latency fault_recovery)
    add_executable(bench_${b} ${CMAKE_CURRENT_SOURCE_DIR}/${b}.cpp)
    target_link_libraries(bench_${b} PRIVATE eplab eplab_warnings)
    set_target_properties(bench_${b} PROPERTIES RUNTIME_OUTPUT_DIRECTORY ${CMAKE_BINARY_DIR}/bin)
  endforeach()
endif()
