// Cluster and model specs as JSON: what `--cluster FILE.json` / `--model FILE.json` read, what `eplab presets
// --dump NAME` writes, and the one resolver every user-given cluster or model goes through (a preset name, a path
// to a .json file, or inline JSON text, which is how Python passes a dict). docs/specs.md documents the fields.
//
// A file gives every field, or names a preset in "base" and gives only the fields it changes. An unknown field, a
// value of the wrong type or out of range, and a missing field without "base" are errors naming the file and the
// field.
#pragma once

#include <nlohmann/json.hpp>
#include <string>

#include "engine/moe_shape.hpp"
#include "engine/topology.hpp"

namespace eplab {

nlohmann::json cluster_to_json(const ClusterSpec& c);
nlohmann::json model_to_json(const MoeShape& m);
// `source` names where the JSON came from in errors ("cluster file 'a.json'").
ClusterSpec cluster_from_json(const nlohmann::json& j, const std::string& source);
MoeShape model_from_json(const nlohmann::json& j, const std::string& source);

// A preset name, a path ending in .json, or JSON text starting with '{'.
ClusterSpec resolve_cluster(const std::string& ref);
MoeShape resolve_model(const std::string& ref);

}  // namespace eplab
