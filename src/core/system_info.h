// What machine this is, for the headers of reports and benchmarks and for matching a saved calibration.
#pragma once

#include <string>

namespace moep {

// The CPU's model as /proc/cpuinfo names it ("model name" on x86, "Model" on Arm); "unknown CPU" if absent.
std::string cpu_model_name();
// This host's name (gethostname); "unknown" if it cannot be read.
std::string host_name();

}  // namespace moep
