# Codec throughput beside single-core memcpy (bench/results/codec_speed.json is regenerated with
#   build/bench/codec_speed --json bench/results/codec_speed.json).
add_executable(codec_speed ${CMAKE_CURRENT_SOURCE_DIR}/codec_speed.cpp)
target_link_libraries(codec_speed PRIVATE eplab_core eplab_warnings)
