#pragma once
// Helpers for the real-time Redis programs: the fixture's port, the server
// script, and a check that reports and counts failures.

#include <cstdio>
#include <cstdlib>
#include <fstream>
#include <stdexcept>
#include <string>

namespace tgredis {

inline std::string env(const char* name) {
  const char* v = std::getenv(name);
  if (!v) throw std::runtime_error(std::string(name) + " is not set: run this through ctest");
  return v;
}

inline int read_port(const std::string& file) {
  std::ifstream in(file);
  int port = 0;
  if (!(in >> port)) throw std::runtime_error("no port in " + file);
  return port;
}

inline int failures = 0;

inline void check(bool ok, const std::string& what) {
  std::printf("%s %s\n", ok ? "ok  " : "FAIL", what.c_str());
  if (!ok) ++failures;
}

}  // namespace tgredis
