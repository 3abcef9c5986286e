#pragma once
// Helpers for the Redis tests: the fixture's port and connection options,
// and, for the real-time programs, a check that reports and counts failures.

#include <cstdio>
#include <cstdlib>
#include <fstream>
#include <stdexcept>
#include <string>

#include <tollgate/redis_connection.hpp>

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

/// Options for the server the CTest fixture "redis: start server" started.
inline tollgate::redis::ConnectionOptions fixture() {
  tollgate::redis::ConnectionOptions o;
  o.port = read_port(env("TOLLGATE_REDIS_PORT_FILE"));
  o.command_timeout = std::chrono::seconds(5);  // a loaded CI machine: never a spurious timeout
  return o;
}

inline int failures = 0;

inline void check(bool ok, const std::string& what) {
  std::printf("%s %s\n", ok ? "ok  " : "FAIL", what.c_str());
  if (!ok) ++failures;
}

}  // namespace tgredis
