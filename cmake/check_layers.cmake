# Checks that every source under a src/ tree includes only what cmake/layers.cmake allows its folder.
#   cmake -DMOEP_SRC_DIR=<src folder> [-DSTAMP=<file touched on success>] -P cmake/check_layers.cmake
# Fails (a fatal error, so the build stops) listing every violation as
#   src/<folder>/<file>: #include "<include>": <rule>
# The build runs it before compiling anything (CMakeLists.txt); tests/layers/test_layer_check.cmake checks
# that it fails on a wrong include.
cmake_minimum_required(VERSION 3.22)
include(${CMAKE_CURRENT_LIST_DIR}/layers.cmake)

if(NOT MOEP_SRC_DIR OR NOT IS_DIRECTORY "${MOEP_SRC_DIR}")
  message(FATAL_ERROR "check_layers: MOEP_SRC_DIR (the src/ folder to check) is not a folder: '${MOEP_SRC_DIR}'")
endif()

set(rules_file "cmake/layers.cmake")
set(violations "")

# Every folder of src/ must have its rules.
file(GLOB entries LIST_DIRECTORIES true RELATIVE "${MOEP_SRC_DIR}" "${MOEP_SRC_DIR}/*")
foreach(entry IN LISTS entries)
  if(IS_DIRECTORY "${MOEP_SRC_DIR}/${entry}" AND NOT entry IN_LIST MOEP_LAYERS)
    list(APPEND violations "src/${entry}/: a folder without rules: add it to MOEP_LAYERS in ${rules_file}")
  endif()
endforeach()

foreach(layer IN LISTS MOEP_LAYERS)
  set(allowed ${MOEP_LAYER_${layer}})
  if(allowed)
    string(REPLACE ";" ", " allowed_text "${allowed}")
  else()
    set(allowed_text "no other folder")
  endif()
  file(GLOB_RECURSE sources RELATIVE "${MOEP_SRC_DIR}" "${MOEP_SRC_DIR}/${layer}/*.h" "${MOEP_SRC_DIR}/${layer}/*.cpp")
  list(SORT sources)
  foreach(source IN LISTS sources)
    file(STRINGS "${MOEP_SRC_DIR}/${source}" include_lines REGEX "^[ \t]*#[ \t]*include[ \t]*[<\"]")
    foreach(line IN LISTS include_lines)
      string(REGEX REPLACE "^[ \t]*#[ \t]*include[ \t]*([<\"])([^>\"]*)[>\"].*$" "\\1;\\2" parsed "${line}")
      list(GET parsed 0 delimiter)
      list(GET parsed 1 included)
      if(delimiter STREQUAL "<")
        # External headers that belong to one folder.
        foreach(owned IN LISTS MOEP_OWNED_HEADERS)
          string(REPLACE "=" ";" owned_pair "${owned}")
          list(GET owned_pair 0 owned_header)
          list(GET owned_pair 1 owner)
          string(FIND "${included}" "${owned_header}" at)
          if(at EQUAL 0 AND NOT owner STREQUAL layer)
            list(APPEND violations
                 "src/${source}: #include <${included}>: only ${owner} may include ${owned_header} (MOEP_OWNED_HEADERS in ${rules_file})")
          endif()
        endforeach()
        continue()
      endif()
      if(NOT included MATCHES "^([A-Za-z0-9_]+)/")
        continue()  # a file beside it, or a generated header such as moep_commit.h
      endif()
      set(folder "${CMAKE_MATCH_1}")
      if(folder STREQUAL layer OR folder IN_LIST allowed OR included IN_LIST allowed
         OR "${source}:${included}" IN_LIST MOEP_LAYER_EXCEPTIONS)
        continue()
      endif()
      list(APPEND violations
           "src/${source}: #include \"${included}\": ${layer} may include from: ${allowed_text} (MOEP_LAYER_${layer} in ${rules_file})")
    endforeach()
  endforeach()
endforeach()

if(violations)
  list(LENGTH violations n)
  string(REPLACE ";" "\n  " listed "${violations}")
  message(FATAL_ERROR "moep layer check: ${n} violation(s) of the layers:\n  ${listed}\n")
endif()
if(STAMP)
  file(TOUCH "${STAMP}")
endif()
