#pragma once
// Shared by the end-to-end programs: child processes (the mock upstream and
// the gateway) with their stdout captured, and a check that counts failures.

#include <fcntl.h>
#include <signal.h>
#include <sys/resource.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cstdio>
#include <stdexcept>
#include <string>
#include <thread>
#include <utility>
#include <vector>

namespace tge2e {

inline int failures = 0;
inline void check(bool ok, const std::string& what) {
  std::printf("%s %s\n", ok ? "ok  " : "FAIL", what.c_str());
  std::fflush(stdout);
  if (!ok) ++failures;
}

struct Child {
  pid_t pid = -1;
  int out = -1;  // its stdout
  std::string first_line;
  std::string rest;
  std::thread drain;
};

struct SpawnOptions {
  std::vector<std::pair<std::string, std::string>> env;  // set in the child only
  rlim_t max_files = 0;                                  // RLIMIT_NOFILE in the child (0: inherited)
};

/// Starts `args[0]` with `args`; returns once it printed its first line.
inline void spawn(Child& c, const std::vector<std::string>& args, const SpawnOptions& o = {}) {
  int fds[2];
  if (pipe(fds) != 0) throw std::runtime_error("pipe");
  c.pid = fork();
  if (c.pid == 0) {
    dup2(fds[1], 1);
    close(fds[0]);
    close(fds[1]);
    for (const auto& [k, v] : o.env) setenv(k.c_str(), v.c_str(), 1);
    if (o.max_files) {
      rlimit r{o.max_files, o.max_files};
      setrlimit(RLIMIT_NOFILE, &r);
    }
    std::vector<char*> argv;
    for (const auto& a : args) argv.push_back(const_cast<char*>(a.c_str()));
    argv.push_back(nullptr);
    execv(argv[0], argv.data());
    _exit(127);
  }
  close(fds[1]);
  c.out = fds[0];
  char ch;
  while (read(c.out, &ch, 1) == 1 && ch != '\n') c.first_line += ch;  // blocks until the child is ready
  c.drain = std::thread([&c] {
    char buf[4096];
    for (ssize_t n; (n = read(c.out, buf, sizeof buf)) > 0;) c.rest.append(buf, std::size_t(n));
  });
}

/// Waits for the child; returns its exit code (128 + signal if killed).
inline int finish(Child& c) {
  int status = 0;
  waitpid(c.pid, &status, 0);
  c.drain.join();
  close(c.out);
  return WIFEXITED(status) ? WEXITSTATUS(status) : 128 + WTERMSIG(status);
}

/// The port in a line "...127.0.0.1:PORT...".
inline unsigned short port_of(const std::string& line) {
  const auto at = line.find("127.0.0.1:");
  if (at == std::string::npos) throw std::runtime_error("no 127.0.0.1:PORT in: " + line);
  return static_cast<unsigned short>(std::stoi(line.substr(at + 10)));
}

}  // namespace tge2e
