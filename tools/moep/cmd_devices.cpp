// moep devices: the GPUs this machine offers moep (Vulkan), with their memory, driver and whether moep can use
// them; the index is what --gpu takes. Without a Vulkan loader or driver it says so and how to get one.
#include <cstdio>

#include "commands.h"
#include "core/error.h"
#include "gpu/gpu_forward.h"

namespace moep::cli {

void register_devices(CLI::App& app) {
  auto* cmd = app.add_subcommand("devices", "List the GPUs (Vulkan devices) moep can run on; --gpu N picks one");
  cmd->callback([] {
    const auto devs = gpu::list_gpus();
    if (devs.empty()) {
      std::printf("no Vulkan device: moep runs on the CPU (install a GPU driver with Vulkan, or Mesa's "
                  "mesa-vulkan-drivers for lavapipe, a Vulkan device on the CPU used by the tests)\n");
      return;
    }
    for (const auto& d : devs) {
      std::printf("%d: %s, %s, %.1f GB device memory, driver %s", d.index, d.name.c_str(), d.type.c_str(),
                  double(d.memory_bytes) / 1e9, d.driver.c_str());
      if (!d.usable)
        std::printf(" (unusable: %s)", d.why_unusable.c_str());
      else if (d.software)
        std::printf(" (software: --device gpu runs on it, --device auto does not)");
      std::printf("\n");
    }
  });
}

}  // namespace moep::cli
