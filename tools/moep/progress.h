// Progress of long work on stderr. On a terminal: a one-line bar redrawn in place. Otherwise (a log file, a
// pipe): a plain line each time another 10% is done, once the work has run for a second (short work stays
// silent).
#pragma once

#include <unistd.h>

#include <chrono>
#include <cstdio>
#include <string>

namespace moep::cli {

class ProgressBar {
 public:
  explicit ProgressBar(std::string label) : label_(std::move(label)), tty_(isatty(2) != 0) {}
  void update(size_t done, size_t total) {
    if (total == 0) return;
    const auto now = std::chrono::steady_clock::now();
    if (start_ == std::chrono::steady_clock::time_point{}) start_ = now;
    const double fraction = double(done) / double(total);
    if (!tty_) {
      const int tenth = int(fraction * 10.0 + 1e-9);
      if (tenth <= last_tenth_) return;
      last_tenth_ = tenth;
      const double secs = std::chrono::duration<double>(now - start_).count();
      if (secs < 1.0) return;
      std::fprintf(stderr, "%s: %3d%% of %.2f GB (%.0f s)\n", label_.c_str(), tenth * 10, double(total) / 1e9, secs);
      return;
    }
    if (done < total && now - last_ < std::chrono::milliseconds(100)) return;
    last_ = now;
    const int width = 30;
    const int filled = int(fraction * width);
    std::fprintf(stderr, "\r%s [%s%s] %5.1f%% of %.2f GB", label_.c_str(), std::string(size_t(filled), '#').c_str(),
                 std::string(size_t(width - filled), ' ').c_str(), 100.0 * fraction, double(total) / 1e9);
    std::fflush(stderr);
    shown_ = true;
  }
  void finish() {
    if (shown_) std::fprintf(stderr, "\n");
    shown_ = false;
  }

 private:
  std::string label_;
  bool tty_;
  bool shown_ = false;
  int last_tenth_ = 0;
  std::chrono::steady_clock::time_point start_{}, last_{};
};

}  // namespace moep::cli
