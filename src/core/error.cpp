#include "core/error.h"

#include <cstdio>
#include <cstdlib>

namespace moep::detail {

static AbortHook g_abort_hook = nullptr;

void set_abort_hook(AbortHook hook) { g_abort_hook = hook; }

void assert_fail(const char* file, int line, const char* cond, const std::string& msg) {
  std::fprintf(stderr, "moep: internal error at %s:%d: %s%s%s\n", file, line, cond, msg.empty() ? "" : ": ",
               msg.c_str());
  std::fflush(stderr);
  if (g_abort_hook) g_abort_hook(3);
  std::abort();
}

}  // namespace moep::detail
