# Codec throughput beside single-core memcpy (bench/results/codec_speed.json is regenerated with
#   build/bench/codec_speed --json bench/results/codec_speed.json).
add_executable(codec_speed ${CMAKE_CURRENT_SOURCE_DIR}/codec_speed.cpp)
target_link_libraries(codec_speed PRIVATE eplab_core eplab_warnings)
# DeepSeek-V3 dispatch codec study on the simulator (bench/results/codec_study.{txt,json}); needs the sim backend:
#   build/bin/bench_codec_study --json bench/results/codec_study.json > bench/results/codec_study.txt
if(EPLAB_WITH_SIMGRID AND TARGET eplab_sim)
  add_executable(bench_codec_study ${CMAKE_CURRENT_SOURCE_DIR}/codec_study.cpp)
  target_link_libraries(bench_codec_study PRIVATE eplab eplab_warnings)
  set_target_properties(bench_codec_study PROPERTIES RUNTIME_OUTPUT_DIRECTORY ${CMAKE_BINARY_DIR}/bin)
endif()
