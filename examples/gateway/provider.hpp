#pragma once
// What the gateway and the mock know of a provider's wire format: the
// `usage` of an answer (OpenAI's and Anthropic's fields), the server-sent
// events of a streamed answer split as they arrive, and the usage a stream
// reports in its own events. Pure functions and small state machines: the
// unit tests drive them byte by byte.

#include <cstdint>
#include <optional>
#include <stdexcept>
#include <string>
#include <string_view>

#include <nlohmann/json.hpp>

namespace llm {

/// The upstream's API: OpenAI's (`/v1/chat/completions`, `Authorization:
/// Bearer`, `x-ratelimit-*`) or Anthropic's Messages API (`/v1/messages`,
/// `x-api-key`, `anthropic-version`, `anthropic-ratelimit-*`).
enum class Api { openai, anthropic };

/// Tokens an answer reports: the input the provider counts against its input
/// limit and the output it produced.
struct Usage {
  std::int64_t input = 0, output = 0;
  std::int64_t total() const { return input + output; }
};

/// An answer's `usage` object read as the provider bills it, each count an
/// integer in [0, max] (or null, for Anthropic's optional cache fields):
///  - OpenAI: prompt_tokens (or input_tokens) and completion_tokens (or
///    output_tokens); total_tokens alone counts as input;
///  - Anthropic: input_tokens + cache_creation_input_tokens (cache reads do
///    not count toward the input limit) and output_tokens.
/// Nothing when a count is missing, negative, not an integer, above `max`,
/// or the sum is above `max`: the caller's estimate then stands.
inline std::optional<Usage> read_usage(const nlohmann::json& u, std::int64_t max, Api api) {
  if (!u.is_object()) return std::nullopt;
  bool bad = false;
  auto count = [&](const char* k) -> std::optional<std::int64_t> {
    auto it = u.find(k);
    if (it == u.end() || it->is_null()) return std::nullopt;
    if (!it->is_number_integer() || (it->is_number_unsigned() && it->get<std::uint64_t>() > std::uint64_t(max)) ||
        it->get<std::int64_t>() < 0 || it->get<std::int64_t>() > max) {
      bad = true;
      return std::nullopt;
    }
    return it->get<std::int64_t>();
  };
  Usage out;
  if (api == Api::anthropic) {
    const auto in = count("input_tokens"), made = count("cache_creation_input_tokens"), outp = count("output_tokens");
    count("cache_read_input_tokens");  // validated; not counted toward the input limit
    if (bad || !in || !outp) return std::nullopt;
    out = {*in + made.value_or(0), *outp};
  } else {
    const auto total = count("total_tokens");
    auto in = count("prompt_tokens");
    if (!in) in = count("input_tokens");
    auto outp = count("completion_tokens");
    if (!outp) outp = count("output_tokens");
    if (bad || (!in && !outp && !total)) return std::nullopt;
    out = in || outp ? Usage{in.value_or(0), outp.value_or(0)} : Usage{*total, 0};
    if (total && *total < out.total()) return std::nullopt;  // contradicts itself
  }
  if (out.total() > max) return std::nullopt;
  return out;
}

/// One server-sent event: its bytes as received (through the blank line
/// that ends it), its `event:` name and its `data:` lines joined by '\n'.
struct SseEvent {
  std::string raw, name, data;
};

/// Splits a byte stream into server-sent events as the bytes arrive (lines
/// end in "\n", "\r\n" or "\r"; an empty line ends an event), without ever
/// holding more than `max_event_bytes` of one event: a longer one throws
/// `std::length_error`. Linear in the bytes fed, however they are cut.
class SseSplitter {
 public:
  explicit SseSplitter(std::size_t max_event_bytes) : max_(max_event_bytes) {}

  /// Appends bytes. Throws `std::length_error` when the pending event
  /// exceeds the bound.
  void feed(std::string_view bytes) {
    buf_.append(bytes);
    if (pending_event_bytes() > max_) throw std::length_error("a server-sent event exceeds the size limit");
  }

  /// The next complete event, if the bytes fed hold one.
  std::optional<SseEvent> next() {
    while (pos_ < buf_.size()) {
      const std::size_t j = buf_.find_first_of("\r\n", pos_);
      if (j == std::string::npos) return std::nullopt;
      std::size_t end = j + 1;
      if (buf_[j] == '\r') {
        if (j + 1 == buf_.size()) return std::nullopt;  // "\r" or "\r\n": not known yet
        if (buf_[j + 1] == '\n') end = j + 2;
      }
      const std::string_view line(buf_.data() + pos_, j - pos_);
      pos_ = end;
      if (line.empty()) {
        current_.raw = buf_.substr(start_, end - start_);
        if (!current_.data.empty()) current_.data.pop_back();  // the last '\n'
        SseEvent done = std::move(current_);
        current_ = {};
        start_ = end;
        if (start_ >= buf_.size() / 2) compact();
        return done;
      }
      field(line);
    }
    return std::nullopt;
  }

  /// What was fed after the last complete event (at the end of a stream:
  /// an unterminated event, forwarded as it is).
  std::string rest() const { return buf_.substr(start_); }

 private:
  std::size_t pending_event_bytes() const { return buf_.size() - start_; }
  void compact() {
    buf_.erase(0, start_);
    pos_ -= start_;
    start_ = 0;
  }
  void field(std::string_view line) {
    const std::size_t colon = line.find(':');
    if (colon == 0) return;  // a comment
    const std::string_view name = line.substr(0, colon);
    std::string_view value = colon == std::string_view::npos ? std::string_view{} : line.substr(colon + 1);
    if (!value.empty() && value[0] == ' ') value.remove_prefix(1);
    if (name == "data") {
      current_.data.append(value);
      current_.data += '\n';
    } else if (name == "event") {
      current_.name = std::string(value);
    }
  }

  std::size_t max_;
  std::string buf_;
  std::size_t start_ = 0;  // where the pending event begins
  std::size_t pos_ = 0;    // where the next unread line begins
  SseEvent current_;
};

/// Reads the usage a streamed answer reports in its own events:
///  - OpenAI chat / completions: the final chunk's `usage` (sent when the
///    request has `stream_options.include_usage`; a gateway that added that
///    option drops the chunk, whose `choices` are empty, before the client);
///    Responses: `response.completed`'s `response.usage`;
///  - Anthropic: `message_start`'s `message.usage` (input, and output so
///    far) and each `message_delta`'s cumulative `usage.output_tokens`.
/// `complete()` once the stream said it ended (OpenAI's `[DONE]` or a
/// completed response, Anthropic's `message_stop`) with its usage known.
class StreamUsage {
 public:
  StreamUsage(Api api, std::int64_t max_tokens, bool drop_usage_chunk)
      : api_(api), max_(max_tokens), drop_(drop_usage_chunk) {}

  /// Reads one event; returns whether it goes on to the client.
  bool on_event(const SseEvent& e) {
    if (e.data.empty()) return true;
    if (e.data == "[DONE]") {
      ended_ = true;
      return true;
    }
    const nlohmann::json j = nlohmann::json::parse(e.data, nullptr, false);
    if (!j.is_object()) return true;
    const std::string type = j.contains("type") && j["type"].is_string() ? j["type"].get<std::string>() : e.name;
    if (api_ == Api::anthropic) {
      if (type == "message_start" && j.contains("message") && j["message"].is_object()) {
        if (auto u = read_usage(j["message"].value("usage", nlohmann::json()), max_, api_)) input_ = *u;
      } else if (type == "message_delta" && j.contains("usage") && j["usage"].is_object()) {
        const nlohmann::json& d = j["usage"];
        if (input_ && d.contains("output_tokens")) {
          nlohmann::json merged = {{"input_tokens", input_->input}, {"output_tokens", d["output_tokens"]}};
          if (auto u = read_usage(merged, max_, api_)) final_ = *u;
          else invalid_ = true;
        }
      } else if (type == "message_stop") {
        ended_ = true;
      } else if (type == "error") {
        failed_ = true;
      }
      return true;
    }
    if (type == "response.completed" && j.contains("response") && j["response"].is_object()) {
      read_final(j["response"].value("usage", nlohmann::json()));
      ended_ = true;
      return true;
    }
    if (j.contains("usage") && j["usage"].is_object()) {
      read_final(j["usage"]);
      const bool usage_only = !j.contains("choices") || (j["choices"].is_array() && j["choices"].empty());
      return !(drop_ && usage_only);
    }
    if (j.contains("error")) failed_ = true;
    return true;
  }

  /// The stream's final usage, once it ended and reported one.
  std::optional<Usage> complete() const { return ended_ && final_ ? final_ : std::nullopt; }
  /// Anthropic: the input counted at the start (known before the end).
  std::optional<Usage> started() const { return input_; }
  bool ended() const { return ended_; }
  bool invalid() const { return invalid_; }
  bool failed() const { return failed_; }

 private:
  void read_final(const nlohmann::json& u) {
    if (auto got = read_usage(u, max_, api_)) final_ = *got;
    else invalid_ = true;
  }

  Api api_;
  std::int64_t max_;
  bool drop_;
  std::optional<Usage> input_, final_;
  bool ended_ = false, invalid_ = false, failed_ = false;
};

}  // namespace llm
