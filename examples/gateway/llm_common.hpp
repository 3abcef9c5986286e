#pragma once
// Shared by the gateway, the mock upstream and the end-to-end driver: the
// OpenAI-style token estimate, a self-signed certificate for tests, and
// small HTTP helpers on Boost.Beast.

#include <openssl/evp.h>
#include <openssl/pem.h>
#include <openssl/x509.h>
#include <openssl/x509v3.h>

#include <boost/asio.hpp>
#include <boost/asio/ssl.hpp>
#include <boost/beast.hpp>
#include <boost/beast/ssl.hpp>
#include <nlohmann/json.hpp>

#include <cstdint>
#include <cstdio>
#include <memory>
#include <stdexcept>
#include <string>
#include <string_view>

namespace llm {

namespace net = boost::asio;
namespace beast = boost::beast;
namespace http = beast::http;
namespace ssl = net::ssl;
using tcp = net::ip::tcp;
using json = nlohmann::json;

/// Text tokens of a message's content, estimated as OpenAI's rule of thumb
/// (about 4 characters a token): a string, or an array of parts whose
/// `text` fields count (OpenAI's content parts, Anthropic's content blocks).
inline std::int64_t content_tokens(const json& c) {
  if (c.is_string()) return (std::int64_t(c.get_ref<const std::string&>().size()) + 3) / 4;
  std::int64_t n = 0;
  if (c.is_array())
    for (const auto& part : c)
      if (part.is_object() && part.contains("text")) n += content_tokens(part["text"]);
  return n;
}

/// Prompt tokens: 4 tokens of framing per message plus its content, and an
/// Anthropic request's `system` prompt. The mock upstream bills the same
/// count, so the gateway's estimate of the prompt is exact here; with a real
/// provider use its tokenizer (tiktoken) or keep a margin.
inline std::int64_t prompt_tokens(const json& body) {
  std::int64_t n = 0;
  if (body.contains("messages") && body["messages"].is_array()) {
    for (const auto& m : body["messages"]) {
      n += 4;
      if (m.is_object() && m.contains("content")) n += content_tokens(m["content"]);
    }
  }
  if (body.contains("system")) n += content_tokens(body["system"]);
  return n;
}

/// `max_tokens` of a request (OpenAI's `max_completion_tokens` too), or `fallback`.
inline std::int64_t max_tokens(const json& body, std::int64_t fallback) {
  for (const char* k : {"max_completion_tokens", "max_tokens"})
    if (body.contains(k) && body[k].is_number_integer() && body[k].get<std::int64_t>() > 0) return body[k].get<std::int64_t>();
  return fallback;
}

/// A fresh EC key and a self-signed certificate for 127.0.0.1 (valid one
/// day), written as PEM files: TLS in tests without the openssl tool.
inline void write_self_signed(const std::string& cert_path, const std::string& key_path) {
  EVP_PKEY* key = EVP_EC_gen("P-256");
  X509* cert = X509_new();
  if (!key || !cert) throw std::runtime_error("openssl: cannot create a key or certificate");
  ASN1_INTEGER_set(X509_get_serialNumber(cert), 1);
  X509_gmtime_adj(X509_getm_notBefore(cert), -60);
  X509_gmtime_adj(X509_getm_notAfter(cert), 24 * 3600);
  X509_set_version(cert, 2);
  X509_set_pubkey(cert, key);
  X509_NAME* name = X509_get_subject_name(cert);
  X509_NAME_add_entry_by_txt(name, "CN", MBSTRING_ASC, reinterpret_cast<const unsigned char*>("127.0.0.1"), -1, -1, 0);
  X509_set_issuer_name(cert, name);
  X509V3_CTX ctx;
  X509V3_set_ctx_nodb(&ctx);
  X509V3_set_ctx(&ctx, cert, cert, nullptr, nullptr, 0);
  for (const char* ext : {"IP:127.0.0.1", "critical,CA:TRUE"}) {
    const int nid = ext[0] == 'I' ? NID_subject_alt_name : NID_basic_constraints;
    X509_EXTENSION* e = X509V3_EXT_conf_nid(nullptr, &ctx, nid, ext);
    if (!e) throw std::runtime_error("openssl: bad extension");
    X509_add_ext(cert, e, -1);
    X509_EXTENSION_free(e);
  }
  if (!X509_sign(cert, key, EVP_sha256())) throw std::runtime_error("openssl: cannot sign");
  FILE* c = std::fopen(cert_path.c_str(), "w");
  FILE* k = std::fopen(key_path.c_str(), "w");
  if (!c || !k) throw std::runtime_error("cannot write " + cert_path + " / " + key_path);
  PEM_write_X509(c, cert);
  PEM_write_PrivateKey(k, key, nullptr, nullptr, 0, nullptr, nullptr);
  std::fclose(c);
  std::fclose(k);
  X509_free(cert);
  EVP_PKEY_free(key);
}

/// "http://host:port" or "https://host:port" (a path after it is ignored).
struct Url {
  bool tls = false;
  std::string host;
  std::string port;
  static Url parse(std::string_view s) {
    Url u;
    if (s.rfind("https://", 0) == 0) u.tls = true, s.remove_prefix(8);
    else if (s.rfind("http://", 0) == 0) s.remove_prefix(7);
    else throw std::invalid_argument("URL must start with http:// or https://: " + std::string(s));
    s = s.substr(0, s.find('/'));
    const auto colon = s.rfind(':');
    if (colon == std::string_view::npos) {
      u.host = std::string(s);
      u.port = u.tls ? "443" : "80";
    } else {
      u.host = std::string(s.substr(0, colon));
      u.port = std::string(s.substr(colon + 1));
    }
    if (u.host.empty() || u.port.empty()) throw std::invalid_argument("URL lacks a host or port");
    return u;
  }
};

/// "host:port" of a listen address.
inline tcp::endpoint parse_listen(std::string_view s) {
  const auto colon = s.rfind(':');
  if (colon == std::string_view::npos) throw std::invalid_argument("listen address must be host:port");
  return {net::ip::make_address(std::string(s.substr(0, colon))),
          static_cast<unsigned short>(std::stoi(std::string(s.substr(colon + 1))))};
}

}  // namespace llm
