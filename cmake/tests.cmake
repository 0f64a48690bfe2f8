# Tests: C unit tests (one executable per module), busted specs, end-to-end
# scenarios in network namespaces, and a bounded fuzz run.

function(sg_c_test name)
  add_executable(${name} spec/c/${name}.c ${ARGN})
  target_include_directories(${name} PRIVATE spec/c)
  target_compile_options(${name} PRIVATE ${SG_WARNINGS})
  target_link_libraries(${name} PRIVATE sgcore)
  add_test(NAME c/${name} COMMAND ${name})
endfunction()

sg_c_test(test_dns_message)
sg_c_test(test_nft_intercept)
sg_c_test(test_nft_filter)
# It holds the netlink answers back to see an ACK come late (see the test).
target_link_options(test_nft_filter PRIVATE -Wl,--wrap=recv)
sg_c_test(test_vm)
sg_c_test(test_http_server)
sg_c_test(test_webhook)

find_program(BUSTED busted)
find_program(LUAJIT_BIN luajit)
if(BUSTED AND LUAJIT_BIN)
  add_test(NAME lua/specs
    COMMAND ${BUSTED} --lua=${LUAJIT_BIN}
    WORKING_DIRECTORY ${CMAKE_SOURCE_DIR})
else()
  message(WARNING "busted or luajit not found: Lua specs are not registered")
endif()

# The specs' paths and roots come from the .busted file at the top.

# The shipped cases files: spec/cases/<path>.json holds the cases of the
# script <path>.lua (a shipped policy or an example), run by `sandgate test`
# exactly as a user's CI would run theirs.
file(GLOB_RECURSE SG_CASES RELATIVE ${CMAKE_SOURCE_DIR}/spec/cases
  ${CMAKE_SOURCE_DIR}/spec/cases/*.json)
foreach(c ${SG_CASES})
  string(REGEX REPLACE "\\.json$" "" script ${c})
  add_test(NAME cases/${script}
    COMMAND sandgate test ${CMAKE_SOURCE_DIR}/${script}.lua ${CMAKE_SOURCE_DIR}/spec/cases/${c})
endforeach()

# `sandgate check` and `sandgate test` from the command line (no root).
add_test(NAME tools/test_cli COMMAND bash ${CMAKE_SOURCE_DIR}/spec/tools/test_cli.sh
  $<TARGET_FILE:sandgate>)

# End-to-end scenarios: each is a bash script that builds its own network
# namespaces and cleans them up. They need root.
file(GLOB SG_E2E_TESTS ${CMAKE_SOURCE_DIR}/spec/e2e/test_*.sh)
foreach(t ${SG_E2E_TESTS})
  get_filename_component(n ${t} NAME_WE)
  add_test(NAME e2e/${n} COMMAND bash ${t} $<TARGET_FILE:sandgate>)
  set_tests_properties(e2e/${n} PROPERTIES TIMEOUT 300 RUN_SERIAL TRUE)
endforeach()

# The DNS parser under libFuzzer, for a bounded time, when clang is there.
find_program(CLANG clang)
if(CLANG)
  set(FUZZ_BIN ${CMAKE_BINARY_DIR}/fuzz_dns_message)
  add_custom_command(OUTPUT ${FUZZ_BIN}
    COMMAND ${CLANG} -std=c11 -D_GNU_SOURCE -g -O1 -fsanitize=fuzzer,address,undefined
            -I${CMAKE_SOURCE_DIR}/core ${CMAKE_SOURCE_DIR}/core/dns/message.c
            ${CMAKE_SOURCE_DIR}/spec/fuzz/fuzz_dns_message.c -o ${FUZZ_BIN}
    DEPENDS core/dns/message.c core/dns/message.h spec/fuzz/fuzz_dns_message.c)
  add_custom_target(fuzzers ALL DEPENDS ${FUZZ_BIN})
  set(SG_FUZZ_SECONDS 30 CACHE STRING "libFuzzer run time in the test suite")
  add_test(NAME fuzz/dns_message
    COMMAND bash ${CMAKE_SOURCE_DIR}/spec/fuzz/run.sh ${FUZZ_BIN}
            ${CMAKE_SOURCE_DIR}/spec/fuzz/corpus/dns ${SG_FUZZ_SECONDS})
else()
  message(STATUS "clang not found: the fuzz target is not built")
endif()
set_tests_properties(c/test_nft_intercept PROPERTIES SKIP_RETURN_CODE 77)

# The deployment files against the binary: they parse, and every variable,
# flag, port and probe they use is one the binary has (and, as root, they
# start it with their own configuration).
add_test(NAME docker/manifests
  COMMAND /usr/bin/python3 ${CMAKE_SOURCE_DIR}/spec/docker/check_manifests.py
          $<TARGET_FILE:sandgate>)
set_tests_properties(docker/manifests PROPERTIES TIMEOUT 300 RUN_SERIAL TRUE)
