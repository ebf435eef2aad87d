// Subcommands of the `moep` tool. Each cmd_*.cpp file defines one register_* function that adds its
// subcommand (options and callback) to the app; main.cpp calls them all.
#pragma once

#include <CLI/CLI.hpp>

namespace moep::cli {

void register_logits(CLI::App& app);    // cmd_logits.cpp
void register_tokenize(CLI::App& app);  // cmd_tokenize.cpp
void register_plan(CLI::App& app);      // cmd_plan.cpp
void register_calibrate(CLI::App& app); // cmd_calibrate.cpp
void register_synth(CLI::App& app);     // cmd_synth.cpp
void register_bench(CLI::App& app);     // cmd_bench.cpp
void register_run(CLI::App& app);       // cmd_run.cpp
void register_devices(CLI::App& app);   // cmd_devices.cpp
void register_serve(CLI::App& app);     // cmd_serve.cpp (a stub saying so when built without the server)
void register_quantize(CLI::App& app);  // cmd_quantize.cpp
void register_template(CLI::App& app);  // cmd_template.cpp

}  // namespace moep::cli
