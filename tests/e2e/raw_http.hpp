#pragma once
// Shared by the end-to-end programs that speak HTTP/1.1 byte by byte:
// blocking loopback sockets with a receive timeout, whole responses
// (Content-Length or chunked) and their parts.

#include <arpa/inet.h>
#include <netinet/in.h>
#include <sys/socket.h>
#include <sys/time.h>
#include <unistd.h>

#include <cerrno>
#include <chrono>
#include <sstream>
#include <string>

namespace tge2e::raw {

using namespace std::chrono_literals;
using Clock = std::chrono::steady_clock;

// A blocking client socket with a receive timeout.
inline int connect_to(unsigned short port, std::chrono::milliseconds timeout = 10s) {
  const int fd = socket(AF_INET, SOCK_STREAM, 0);
  if (fd < 0) return -1;
  timeval tv{static_cast<time_t>(timeout.count() / 1000), static_cast<suseconds_t>(timeout.count() % 1000 * 1000)};
  setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv);
  sockaddr_in a{};
  a.sin_family = AF_INET;
  a.sin_port = htons(port);
  a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  if (connect(fd, reinterpret_cast<sockaddr*>(&a), sizeof a) != 0) {
    close(fd);
    return -1;
  }
  return fd;
}

inline bool send_all(int fd, const std::string& s) {
  for (std::size_t off = 0; off < s.size();) {
    const ssize_t n = send(fd, s.data() + off, s.size() - off, MSG_NOSIGNAL);
    if (n <= 0) return false;
    off += std::size_t(n);
  }
  return true;
}

// Reads one HTTP response (headers + Content-Length body), or what came
// before the peer closed or the timeout. Empty: nothing at all.
inline std::string read_response(int fd) {
  std::string got;
  char buf[8192];
  for (;;) {
    const auto end = got.find("\r\n\r\n");
    if (end != std::string::npos) {
      std::size_t length = 0;
      std::istringstream in(got.substr(0, end));
      for (std::string line; std::getline(in, line);) {
        for (auto& ch : line) ch = char(std::tolower(static_cast<unsigned char>(ch)));
        if (line.rfind("content-length:", 0) == 0) length = std::stoul(line.substr(15));
      }
      if (got.size() >= end + 4 + length) return got.substr(0, end + 4 + length);
    }
    const ssize_t n = recv(fd, buf, sizeof buf, 0);
    if (n <= 0) return got;
    got.append(buf, std::size_t(n));
  }
}

inline int status_of(const std::string& response) {
  if (response.rfind("HTTP/1.", 0) != 0 || response.size() < 12) return 0;
  return std::stoi(response.substr(9, 3));
}
inline std::string body_of(const std::string& response) {
  const auto end = response.find("\r\n\r\n");
  return end == std::string::npos ? "" : response.substr(end + 4);
}

// True when the peer closes the connection (EOF or reset) before `within`.
inline bool closed_by_peer(int fd, std::chrono::milliseconds within) {
  const auto until = Clock::now() + within;
  char buf[256];
  while (Clock::now() < until) {
    const ssize_t n = recv(fd, buf, sizeof buf, 0);
    if (n == 0) return true;
    if (n < 0) return errno == ECONNRESET;  // EAGAIN: the receive timeout passed
  }
  return false;
}

inline std::string post(const std::string& target, const std::string& key, const std::string& body,
                 const std::string& extra = "", const std::string& version = "HTTP/1.1") {
  std::string r = "POST " + target + " " + version + "\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n";
  if (!key.empty()) r += "Authorization: Bearer " + key + "\r\n";
  r += extra;
  r += "Content-Length: " + std::to_string(body.size()) + "\r\n\r\n" + body;
  return r;
}

// One request on a fresh connection; the response.
inline std::string once(unsigned short port, const std::string& raw) {
  const int fd = connect_to(port);
  if (fd < 0) return "";
  send_all(fd, raw);
  std::string r = read_response(fd);
  close(fd);
  return r;
}

// Reads until `needle` is in what arrived (or the peer closes, or the
// receive timeout passes); returns everything read so far, `got` first.
inline std::string read_until(int fd, const std::string& needle, std::string got = {}) {
  char buf[8192];
  while (got.find(needle) == std::string::npos) {
    const ssize_t n = recv(fd, buf, sizeof buf, 0);
    if (n <= 0) break;
    got.append(buf, std::size_t(n));
  }
  return got;
}

// The end of a chunked body: its last, empty chunk.
inline constexpr const char* kLastChunk = "\r\n0\r\n\r\n";

// One request on a fresh connection whose answer is chunked (a stream): all
// of it, through the last chunk (or what came before the peer closed).
inline std::string once_stream(unsigned short port, const std::string& raw) {
  const int fd = connect_to(port);
  if (fd < 0) return "";
  send_all(fd, raw);
  std::string got = read_until(fd, kLastChunk);
  close(fd);
  return got;
}

}  // namespace tge2e::raw
