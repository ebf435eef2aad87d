// The machine moep runs on, as a hardware profile: shared by `moep calibrate` (which measures it) and
// `moep plan` without --hardware (which plans for it).
#pragma once

#include <memory>
#include <string>

#include "comm/communicator.h"
#include "perf/calibrate.h"
#include "perf/profiles.h"

namespace moep::cli {

// Where `moep calibrate --save` stores this machine's profile and `moep plan` looks for it:
// $MOEP_CACHE_DIR, else $XDG_CACHE_HOME/moep, else $HOME/.cache/moep, then "this-machine.json".
std::string stored_calibration_path();

// Fills what every calibration records about where it ran: host, CPU, commit, date, threads, and a name
// (`name`, or measured-HOST-<ranks>x<threads>) and description.
void describe_calibration(perf::CalibrateOptions& co, Communicator& comm, int threads, const std::string& name);

// Shorter timings and smaller buffers (--quick). `rotation_given`: the user chose --rotation-mb.
void make_quick(perf::CalibrateOptions& co, bool rotation_given);

// This machine's profile for `moep plan`: the stored calibration when it was measured on this CPU and host
// with this many threads, otherwise a quick calibration (tens of seconds on one rank), stored for next time
// where the cache directory can be written. Says on stderr which it was. The profile is added to `profiles`
// and returned from there.
const perf::HardwareProfile& this_machine_profile(perf::ProfileSet& profiles);

// For --attention auto and --head auto: the profiles stored by `moep calibrate --save` when they were measured on
// this CPU and host with `threads` threads per rank (the network one only where it was measured under mpirun),
// else null. Never measures.
struct StoredProfiles {
  std::shared_ptr<const perf::HardwareProfile> hardware;
  std::shared_ptr<const perf::NetworkProfile> network;
};
StoredProfiles stored_profiles_for_auto(int threads);

}  // namespace moep::cli
