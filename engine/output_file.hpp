// Output files (reports, timelines, --json, -o): written whole to a temporary file beside the target, checked
// (every write, then close) and renamed over it, so a failed write never leaves a truncated file where the old
// one was and never passes silently. Errors name the path and what failed.
#pragma once

#include <string>

namespace eplab {

// Writes `contents` to `path`. A character device (/dev/stdout, /dev/full) cannot be renamed onto: it is written
// directly, and the write is checked all the same. `what` names the file in errors ("the report").
void write_output_file(const std::string& path, const std::string& contents, const std::string& what);

// Fails now, naming the path, when write_output_file(path) could not succeed later: the directory is missing or
// not writable (a temporary file is created there and removed), or the path is a directory. For checking an
// output before a long run rather than after it.
void check_output_path(const std::string& path, const std::string& what);

}  // namespace eplab
