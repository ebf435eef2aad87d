// Subcommands of the `moep` tool. Each cmd_*.cpp file defines one register_* function that adds its
// subcommand (options and callback) to the app; main.cpp calls them all.
#pragma once

#include <CLI/CLI.hpp>

namespace moep::cli {

void register_logits(CLI::App& app);    // cmd_logits.cpp

}  // namespace moep::cli
