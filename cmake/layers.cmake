# The layers of src/ and what each may use: the one place moep's dependency graph is written down.
#
# Each folder of src/ is one static library, moep_<folder>. MOEP_LAYER_<folder> lists what the folder's sources
# may name in an `#include "…"` of another folder: a whole folder, or one header of it ("model/config.h"); the
# library links the libraries of those folders and nothing else. MOEP_LAYER_LIBS_<folder> lists the other
# libraries it links (CMake targets). MOEP_OWNED_HEADERS says which external headers one folder alone may
# include, so that the library behind them stays its own.
#
# Dependencies point one way (STYLE.md): runtime → {model, moe} → {kernels, comm, io} → core. moe sits on model
# (the MoE block computes with a layer's weights and the model's config); perf runs without weights, so it
# may take the config and the expert placement but not the model's weights or loader. text (tokenizer, chat
# templates) needs core, and io to read a tokenizer from GGUF metadata; server is the only folder that speaks HTTP. tools/, tests/ and bench/ may
# include any folder.
#
# cmake/check_layers.cmake enforces the lists at every build: a source that includes from a folder, or a header,
# that its folder's list does not name fails the build, naming the file, the include and this rule. Adding a
# dependency is a decision: make it here, where it can be seen.

# In dependency order: each folder uses only folders before it.
set(MOEP_LAYERS core io kernels comm text model moe gpu perf runtime server)

set(MOEP_LAYER_core "")
set(MOEP_LAYER_io core)
set(MOEP_LAYER_kernels core)
set(MOEP_LAYER_comm core)
set(MOEP_LAYER_text core io)
# The loader reads which experts (or which slice) this rank holds from the placement. moe/placement.h and its .cpp
# use core alone and form their own library, moep_placement (CMakeLists.txt), so model does not link the MoE block.
set(MOEP_LAYER_model core io moe/placement.h)
set(MOEP_LAYER_moe core kernels comm model)
# The GPU forward pass: the model's weights and config, the placement, the communicator for the all-reduce. Not the
# CPU kernels or the MoE block: it computes everything itself, on the device.
set(MOEP_LAYER_gpu core comm model moe/placement.h)
# Not model/weights.h, model/model.h or io: perf predicts and calibrates without a checkpoint.
set(MOEP_LAYER_perf core kernels comm model/config.h moe/placement.h)
# runtime takes perf for one decision: `--attention auto` and `--head auto` ask the performance model.
set(MOEP_LAYER_runtime core kernels comm io model moe gpu text perf)
set(MOEP_LAYER_server core runtime text)

# Includes allowed against the lists above, each as "<file under src/>:<include>", with why and until when.
# None today.
set(MOEP_LAYER_EXCEPTIONS "")

set(MOEP_LAYER_LIBS_core Threads::Threads)
set(MOEP_LAYER_LIBS_io nlohmann_json::nlohmann_json)
set(MOEP_LAYER_LIBS_kernels "")
set(MOEP_LAYER_LIBS_comm "")  # and MPI::MPI_C, privately, when MOEP_WITH_MPI (CMakeLists.txt)
set(MOEP_LAYER_LIBS_text nlohmann_json::nlohmann_json PkgConfig::PCRE2 PkgConfig::ICU)
set(MOEP_LAYER_LIBS_model nlohmann_json::nlohmann_json)
set(MOEP_LAYER_LIBS_moe nlohmann_json::nlohmann_json moep_placement)
set(MOEP_LAYER_LIBS_gpu ${CMAKE_DL_LIBS})  # the Vulkan loader is opened at run time (dlopen)
set(MOEP_LAYER_LIBS_perf nlohmann_json::nlohmann_json)
set(MOEP_LAYER_LIBS_runtime nlohmann_json::nlohmann_json moep_commit)  # moep_commit: the generated moep_commit.h
set(MOEP_LAYER_LIBS_server nlohmann_json::nlohmann_json moep_commit)  # and the HTTP library, privately

# "<header or header folder>=<the one folder that may include it>".
set(MOEP_OWNED_HEADERS "mpi.h=comm" "httplib.h=server" "pcre2.h=text" "unicode/=text" "vulkan/=gpu")
