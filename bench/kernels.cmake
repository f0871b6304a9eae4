# GPU kernel throughput beside the CPU code it replaces, and device-to-device copy bandwidth. Built with the
# CUDA backend only; run on a GPU machine with scripts/gpu_check.sh (writes gpu_bench.json).
if(TARGET eplab_kernels)
  add_executable(gpu_bench ${CMAKE_CURRENT_SOURCE_DIR}/gpu_bench.cpp)
  target_link_libraries(gpu_bench PRIVATE eplab eplab_kernels eplab_warnings)
  set_target_properties(gpu_bench PROPERTIES RUNTIME_OUTPUT_DIRECTORY ${CMAKE_BINARY_DIR}/bin)
endif()
