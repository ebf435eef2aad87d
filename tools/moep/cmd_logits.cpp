#include "commands.h"
#include "core/error.h"

namespace moep::cli {
void register_logits(CLI::App& app) {
  auto* cmd = app.add_subcommand("logits", "Write the logits of a token sequence as a .npy file");
  cmd->callback([] { fail("logits: under construction"); });
}
}  // namespace moep::cli
