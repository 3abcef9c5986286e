#pragma once
// tollgate's version, written here only: CMakeLists.txt reads these three
// numbers for the package version, its CMake config and its pkg-config file.

#define TOLLGATE_VERSION_MAJOR 0
#define TOLLGATE_VERSION_MINOR 1
#define TOLLGATE_VERSION_PATCH 0

#define TOLLGATE_DETAIL_STR2(x) #x
#define TOLLGATE_DETAIL_STR(x) TOLLGATE_DETAIL_STR2(x)
/// "major.minor.patch", e.g. "0.1.0".
#define TOLLGATE_VERSION                                                                     \
  TOLLGATE_DETAIL_STR(TOLLGATE_VERSION_MAJOR) "." TOLLGATE_DETAIL_STR(TOLLGATE_VERSION_MINOR) "." \
  TOLLGATE_DETAIL_STR(TOLLGATE_VERSION_PATCH)
