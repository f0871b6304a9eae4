# Load-balancing figures (bench/results/policy_balance.json is regenerated with
#   build/bench/policy_balance --json bench/results/policy_balance.json).
add_executable(policy_balance ${CMAKE_CURRENT_SOURCE_DIR}/policy_balance.cpp)
target_link_libraries(policy_balance PRIVATE eplab_core eplab_warnings)
# Rebalancing over time (bench/results/policy_migration.json: build/bench/policy_migration --json ...).
add_executable(policy_migration ${CMAKE_CURRENT_SOURCE_DIR}/policy_migration.cpp)
target_link_libraries(policy_migration PRIVATE eplab_core eplab_warnings)
# Policies on the simulator: full runs with migration as traffic (bench/results/policy_sim.json:
#   build/bench/policy_sim --json bench/results/policy_sim.json).
add_executable(policy_sim ${CMAKE_CURRENT_SOURCE_DIR}/policy_sim.cpp)
target_link_libraries(policy_sim PRIVATE eplab eplab_warnings)
