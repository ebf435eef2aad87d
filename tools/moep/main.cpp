// moep: run Mixture-of-Experts models spread over several machines.
#include <cstdio>
#include "moep_commit.h"
#include <cstdlib>
#include <string>
#include <exception>
#include <new>
#include <system_error>

#include "commands.h"
#include "core/error.h"

int main(int argc, char** argv) {
  CLI::App app{"moep: Mixture-of-Experts inference with experts spread over nodes (expert parallelism)"};
  app.set_version_flag("--version", std::string("moep ") + MOEP_VERSION + " (" + MOEP_GIT_COMMIT + ")");
  app.require_subcommand(1);
  // Every option's --help shows its default; subcommands inherit this from the app when they are added.
  app.option_defaults()->always_capture_default();
  // Flag errors read like every other error: "moep: error: <what>" and a hint.
  app.failure_message([](const CLI::App*, const CLI::Error& e) {
    return std::string("moep: error: ") + e.what() + "\nRun with --help for more information.\n";
  });
  moep::cli::register_logits(app);
  moep::cli::register_tokenize(app);
  moep::cli::register_plan(app);
  moep::cli::register_calibrate(app);
  moep::cli::register_synth(app);
  moep::cli::register_bench(app);
  moep::cli::register_run(app);
  moep::cli::register_serve(app);
  moep::cli::register_devices(app);
  moep::cli::register_quantize(app);
  moep::cli::register_template(app);
  try {
    app.parse(argc, argv);
  } catch (const CLI::ParseError& e) {
    return app.exit(e);
  } catch (const moep::CollectiveError& e) {
    // Every rank raised the same error together: rank 0 alone says it, and every rank ends normally.
    const char* rank = std::getenv("OMPI_COMM_WORLD_RANK");
    if (!rank || std::string(rank) == "0") std::fprintf(stderr, "moep: error: %s\n", e.what());
    return 1;
  } catch (const moep::Error& e) {
    std::fprintf(stderr, "moep: error: %s\n", e.what());
    return 1;
  } catch (const std::bad_alloc&) {
    // Under MPI, as for any error: this rank ends with status 1 and mpirun ends the others.
    std::fprintf(stderr, "moep: error: out of memory (an allocation failed); use a smaller model, context or batch, "
                         "or fewer threads\n");
    return 1;
  } catch (const std::system_error& e) {  // e.g. a thread that could not be created
    std::fprintf(stderr, "moep: error: %s (system error %d)\n", e.what(), e.code().value());
    return 1;
  } catch (const std::exception& e) {
    std::fprintf(stderr, "moep: error: %s\n", e.what());
    return 1;
  }
  return 0;
}
