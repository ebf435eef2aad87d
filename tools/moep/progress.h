// A one-line progress bar on stderr (only when stderr is a terminal; otherwise silent).
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
    if (!tty_ || total == 0) return;
    const auto now = std::chrono::steady_clock::now();
    if (done < total && now - last_ < std::chrono::milliseconds(100)) return;
    last_ = now;
    const int width = 30;
    const int filled = int(double(done) / double(total) * width);
    std::fprintf(stderr, "\r%s [%s%s] %5.1f%% of %.2f GB", label_.c_str(), std::string(size_t(filled), '#').c_str(),
                 std::string(size_t(width - filled), ' ').c_str(), 100.0 * double(done) / double(total),
                 double(total) / 1e9);
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
  std::chrono::steady_clock::time_point last_{};
};

}  // namespace moep::cli
