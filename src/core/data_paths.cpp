#include "core/data_paths.h"

#include <filesystem>

namespace moep {

std::string find_data_path(const std::string& source_rel, const std::string& install_rel) {
  namespace fs = std::filesystem;
  std::error_code ec;
#ifdef MOEP_SOURCE_DIR
  const fs::path in_source = fs::path(MOEP_SOURCE_DIR) / source_rel;
  if (fs::exists(in_source, ec)) return in_source.string();
#endif
  // Installed under another prefix than the build was configured with (cmake --install --prefix P): the data
  // sits at P/share/moep beside P/bin/moep.
  const fs::path exe = fs::read_symlink("/proc/self/exe", ec);
  if (!ec) {
    const fs::path beside = exe.parent_path().parent_path() / "share" / "moep" / install_rel;
    if (fs::exists(beside, ec)) return beside.string();
  }
#ifdef MOEP_INSTALL_DATA_DIR
  const fs::path installed = fs::path(MOEP_INSTALL_DATA_DIR) / install_rel;
  if (fs::exists(installed, ec)) return installed.string();
#endif
  return {};
}

}  // namespace moep
