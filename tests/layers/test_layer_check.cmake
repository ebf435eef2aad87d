# The layer check (cmake/check_layers.cmake) passes on the real src/ and fails, naming the file, the include and
# the rule, on a copy of it with one wrong include added.
#   cmake -DMOEP_SOURCE_DIR=<checkout> -DWORK_DIR=<scratch folder> -P tests/layers/test_layer_check.cmake
cmake_minimum_required(VERSION 3.22)
set(check_script "${MOEP_SOURCE_DIR}/cmake/check_layers.cmake")

# Runs the check on src_dir; sets check_result (the exit status) and check_output (stdout and stderr).
function(run_layer_check src_dir)
  execute_process(COMMAND ${CMAKE_COMMAND} -DMOEP_SRC_DIR=${src_dir} -P ${check_script}
                  RESULT_VARIABLE result OUTPUT_VARIABLE out ERROR_VARIABLE out)
  set(check_result "${result}" PARENT_SCOPE)
  set(check_output "${out}" PARENT_SCOPE)
endfunction()

run_layer_check("${MOEP_SOURCE_DIR}/src")
if(NOT check_result EQUAL 0)
  message(FATAL_ERROR "the layer check fails on the real tree:\n${check_output}")
endif()
message(STATUS "real tree: passes")

file(REMOVE_RECURSE "${WORK_DIR}")
file(MAKE_DIRECTORY "${WORK_DIR}")
file(COPY "${MOEP_SOURCE_DIR}/src" DESTINATION "${WORK_DIR}")
set(copy "${WORK_DIR}/src")

# Each case: a file added to the copy, its one line, and what the failure must say.
set(case_files "core/layer_probe.h" "perf/layer_probe.cpp" "runtime/layer_probe.cpp" "npu/layer_probe.cpp")
set(case_lines "#include \"runtime/engine.h\"" "#include \"model/weights.h\"" "#include <mpi.h>"
               "#include \"core/error.h\"")
set(case_expected
    "src/core/layer_probe.h: #include \"runtime/engine.h\": core may include from: no other folder"
    "src/perf/layer_probe.cpp: #include \"model/weights.h\": perf may include from:"
    "src/runtime/layer_probe.cpp: #include <mpi.h>: only comm may include mpi.h"
    "src/npu/: a folder without rules")
foreach(i RANGE 3)
  list(GET case_files ${i} file)
  list(GET case_lines ${i} line)
  list(GET case_expected ${i} expected)
  file(WRITE "${copy}/${file}" "${line}\n")
  run_layer_check("${copy}")
  get_filename_component(folder "${copy}/${file}" DIRECTORY)
  file(REMOVE "${copy}/${file}")
  if(folder STREQUAL "${copy}/npu")
    file(REMOVE_RECURSE "${folder}")
  endif()
  if(check_result EQUAL 0)
    message(FATAL_ERROR "the layer check passes with ${file} containing '${line}'")
  endif()
  string(FIND "${check_output}" "${expected}" at)
  if(at EQUAL -1)
    message(FATAL_ERROR "the layer check failed on ${file} without saying '${expected}':\n${check_output}")
  endif()
  message(STATUS "${file} with '${line}': fails as expected")
endforeach()

# The copy with every probe removed passes again: the failures came from the probes alone.
run_layer_check("${copy}")
if(NOT check_result EQUAL 0)
  message(FATAL_ERROR "the layer check fails on the unchanged copy:\n${check_output}")
endif()
file(REMOVE_RECURSE "${WORK_DIR}")
