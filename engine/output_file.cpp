#include "engine/output_file.hpp"

#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>
#include <filesystem>
#include <vector>

#include "engine/error.hpp"

namespace eplab {
namespace {

namespace fs = std::filesystem;

std::string why(int err) { return std::strerror(err); }

// Follows a symbolic link, so that the file it points to is replaced and the link stays.
std::string resolve(const std::string& path) {
  std::error_code ec;
  if (fs::is_symlink(path, ec)) {
    const fs::path target = fs::weakly_canonical(path, ec);
    if (!ec) return target.string();
  }
  return path;
}

std::string directory_of(const std::string& path) {
  const fs::path dir = fs::path(path).parent_path();
  return dir.empty() ? "." : dir.string();
}

// Writes all of `contents` to fd; returns 0 or the errno of the first failure.
int write_all(int fd, const std::string& contents) {
  size_t off = 0;
  while (off < contents.size()) {
    const ssize_t n = ::write(fd, contents.data() + off, contents.size() - off);
    if (n < 0 && errno == EINTR) continue;
    if (n <= 0) return n < 0 ? errno : EIO;
    off += static_cast<size_t>(n);
  }
  return 0;
}

bool is_char_device(const std::string& path) {
  struct stat st {};
  return ::stat(path.c_str(), &st) == 0 && S_ISCHR(st.st_mode);
}

// Creates a temporary file in `dir` for `name`; returns its fd and sets `tmp`, or throws naming `path`.
int make_temp(const std::string& dir, const std::string& name, const std::string& path, const std::string& what,
              std::string& tmp) {
  std::string pattern = (fs::path(dir) / ("." + name + ".tmp.XXXXXX")).string();
  std::vector<char> buf(pattern.begin(), pattern.end());
  buf.push_back('\0');
  const int fd = ::mkstemp(buf.data());
  if (fd < 0)
    throw EplabError("cannot write " + what + " to '" + path + "': cannot create a file in directory '" + dir + "' (" +
                     why(errno) + ")");
  tmp = buf.data();
  return fd;
}

}  // namespace

void write_output_file(const std::string& path_in, const std::string& contents, const std::string& what) {
  const std::string path = resolve(path_in);
  if (is_char_device(path)) {
    const int fd = ::open(path.c_str(), O_WRONLY | O_CLOEXEC);
    if (fd < 0) throw EplabError("cannot write " + what + " to '" + path_in + "' (" + why(errno) + ")");
    int err = write_all(fd, contents);
    if (::close(fd) != 0 && err == 0) err = errno;
    if (err != 0) throw EplabError("writing " + what + " to '" + path_in + "' failed (" + why(err) + ")");
    return;
  }
  std::error_code ec;
  if (fs::is_directory(path, ec)) throw EplabError("cannot write " + what + " to '" + path_in + "': it is a directory");
  const std::string dir = directory_of(path);
  std::string tmp;
  const int fd = make_temp(dir, fs::path(path).filename().string(), path_in, what, tmp);
  // The new file gets the old one's permissions, or the usual ones for a new file (mkstemp's are 0600).
  struct stat old {};
  mode_t mode = 0;
  if (::stat(path.c_str(), &old) == 0) {
    mode = old.st_mode & 07777;
  } else {
    const mode_t mask = ::umask(0);
    ::umask(mask);
    mode = 0666 & ~mask;
  }
  int err = write_all(fd, contents);
  if (err == 0 && ::fchmod(fd, mode) != 0) err = errno;
  if (::close(fd) != 0 && err == 0) err = errno;
  if (err != 0) {
    ::unlink(tmp.c_str());
    throw EplabError("writing " + what + " to '" + path_in + "' failed (" + why(err) + ")");
  }
  if (::rename(tmp.c_str(), path.c_str()) != 0) {
    err = errno;
    ::unlink(tmp.c_str());
    throw EplabError("writing " + what + " to '" + path_in + "' failed: cannot replace it (" + why(err) + ")");
  }
}

void check_output_path(const std::string& path_in, const std::string& what) {
  const std::string path = resolve(path_in);
  if (is_char_device(path)) {
    const int fd = ::open(path.c_str(), O_WRONLY | O_CLOEXEC);
    if (fd < 0) throw EplabError("cannot write " + what + " to '" + path_in + "' (" + why(errno) + ")");
    ::close(fd);
    return;
  }
  std::error_code ec;
  if (fs::is_directory(path, ec)) throw EplabError("cannot write " + what + " to '" + path_in + "': it is a directory");
  std::string tmp;
  const int fd = make_temp(directory_of(path), fs::path(path).filename().string(), path_in, what, tmp);
  ::close(fd);
  ::unlink(tmp.c_str());
}

}  // namespace eplab
