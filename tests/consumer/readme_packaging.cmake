cmake_minimum_required(VERSION 3.21)
# Runs the README's "Getting it into your build" blocks as written, with two
# substitutions only: "<tollgate's repository URL>" becomes this clone
# (file://SOURCE, committed main) and /opt/tollgate a scratch prefix.
#   cmake -DSOURCE=<repo> -DWORK=<dir> -DCXX=<compiler> -DGENERATOR=<gen> -P readme_packaging.cmake
file(READ ${SOURCE}/README.md readme)
file(REMOVE_RECURSE ${WORK})
file(MAKE_DIRECTORY ${WORK})
set(url "file://${SOURCE}")
set(prefix "${WORK}/opt/tollgate")

function(readme_block name out)
  string(REGEX MATCH "<!-- ${name} -->\n```[a-z]*\n(.*)```\n<!-- /${name} -->" _ "${readme}")
  if(NOT CMAKE_MATCH_1)
    message(FATAL_ERROR "README.md has no block <!-- ${name} -->")
  endif()
  string(REPLACE "<tollgate's repository URL>" "${url}" text "${CMAKE_MATCH_1}")
  string(REPLACE "/opt/tollgate" "${prefix}" text "${text}")
  set(${out} "${text}" PARENT_SCOPE)
endfunction()

function(run what)
  execute_process(COMMAND ${ARGN} WORKING_DIRECTORY ${WORK} RESULT_VARIABLE rc OUTPUT_VARIABLE out ERROR_VARIABLE err)
  if(NOT rc EQUAL 0)
    message(FATAL_ERROR "${what} failed (${rc}):\n${out}\n${err}")
  endif()
  message(STATUS "ok: ${what}")
endfunction()

# A downstream project around a CMake block: my_service from the consumer's main.cpp.
function(project_with name snippet)
  set(dir ${WORK}/${name})
  file(MAKE_DIRECTORY ${dir})
  configure_file(${SOURCE}/tests/consumer/main.cpp ${dir}/my_service.cpp COPYONLY)
  file(WRITE ${dir}/CMakeLists.txt "cmake_minimum_required(VERSION 3.21)\nproject(my_service LANGUAGES CXX)\n"
                                   "add_executable(my_service my_service.cpp)\n${snippet}\n"
                                   "install(TARGETS my_service)\n")
  run("${name}: configure" ${CMAKE_COMMAND} -S ${dir} -B ${dir}/build -G ${GENERATOR} -DCMAKE_CXX_COMPILER=${CXX}
      -DCMAKE_PREFIX_PATH=${prefix})
  run("${name}: build" ${CMAKE_COMMAND} --build ${dir}/build)
  run("${name}: run" ${dir}/build/my_service)
  run("${name}: install" ${CMAKE_COMMAND} --install ${dir}/build --prefix ${dir}/installed)
  if(EXISTS ${dir}/installed/include/tollgate)
    message(FATAL_ERROR "${name}: installing the consumer installed tollgate's headers too")
  endif()
endfunction()

readme_block(fetchcontent fetch)
project_with(fetchcontent "${fetch}")

# The install block and the pkg-config block are shell commands.
readme_block(install install_sh)
readme_block(pkg-config pkg_sh)
configure_file(${SOURCE}/tests/consumer/main.cpp ${WORK}/my_service.cpp COPYONLY)
file(WRITE ${WORK}/install.sh "set -euo pipefail\nexport CXX='${CXX}'\n${install_sh}")
run("install block" bash ${WORK}/install.sh)
foreach(f include/tollgate/tollgate.hpp include/tollgate/version.hpp share/cmake/tollgate/tollgateConfig.cmake
          share/pkgconfig/tollgate.pc)
  if(NOT EXISTS ${prefix}/${f})
    message(FATAL_ERROR "the install block did not install ${f}")
  endif()
endforeach()
readme_block(find-package find)
project_with(find_package "${find}")
file(WRITE ${WORK}/pkg.sh "set -euo pipefail\nc++() { '${CXX}' \"$@\"; }\n${pkg_sh}\n./my_service\n")
run("pkg-config block" bash ${WORK}/pkg.sh)
message(STATUS "README.md: FetchContent, install + find_package, and pkg-config all work as written")
