// Where moep finds the data files it ships (hardware and network profiles, the GPT-2 tokenizer that synthetic
// models carry): in the source tree a build was made from, else where `cmake --install` put them
// (<prefix>/share/moep, found beside <prefix>/bin/moep or at the prefix the build was configured with).
#pragma once

#include <string>

namespace moep {

// The first of <source tree>/`source_rel`, <the executable's dir>/../share/moep/`install_rel` and <the configured
// install data dir>/`install_rel` that exists; empty if none.
std::string find_data_path(const std::string& source_rel, const std::string& install_rel);

}  // namespace moep
