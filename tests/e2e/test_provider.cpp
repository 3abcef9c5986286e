// The gateway's wire-format code: usage objects of both APIs, server-sent
// events split however the bytes are cut, and the usage a stream reports.

#include <string>
#include <vector>

#include "catch.hpp"
#include "provider.hpp"

using llm::Api;
using llm::read_usage;
using llm::SseEvent;
using llm::SseSplitter;
using llm::StreamUsage;
using nlohmann::json;

namespace {

std::vector<SseEvent> split_all(const std::vector<std::string>& pieces, std::size_t max = 1 << 20) {
  SseSplitter s(max);
  std::vector<SseEvent> out;
  for (const auto& p : pieces) {
    s.feed(p);
    while (auto e = s.next()) out.push_back(*e);
  }
  return out;
}

}  // namespace

TEST_CASE("usage: OpenAI's and Anthropic's fields, validated", "[gateway][usage]") {
  auto u = read_usage(json::parse(R"({"prompt_tokens":12,"completion_tokens":30,"total_tokens":42})"), 1000, Api::openai);
  REQUIRE(u);
  CHECK(u->input == 12);
  CHECK(u->output == 30);
  u = read_usage(json::parse(R"({"input_tokens":7,"output_tokens":3,"total_tokens":10})"), 1000, Api::openai);  // Responses
  REQUIRE(u);
  CHECK(u->total() == 10);
  u = read_usage(json::parse(R"({"prompt_tokens":9,"total_tokens":9})"), 1000, Api::openai);  // embeddings
  REQUIRE(u);
  CHECK(u->total() == 9);
  // Anthropic: cache writes count as input, cache reads do not; null cache fields are absent.
  u = read_usage(json::parse(R"({"input_tokens":100,"cache_creation_input_tokens":50,"cache_read_input_tokens":4000,"output_tokens":20})"),
                 10000, Api::anthropic);
  REQUIRE(u);
  CHECK(u->input == 150);
  CHECK(u->output == 20);
  u = read_usage(json::parse(R"({"input_tokens":5,"cache_creation_input_tokens":null,"output_tokens":2})"), 100, Api::anthropic);
  REQUIRE(u);
  CHECK(u->total() == 7);
  // Not believable: the estimate stands.
  for (const char* bad : {R"({"prompt_tokens":-1,"completion_tokens":1})", R"({"prompt_tokens":1.5,"completion_tokens":1})",
                          R"({"prompt_tokens":"7","completion_tokens":1})", R"({"prompt_tokens":1e300})",
                          R"({"prompt_tokens":600,"completion_tokens":600})", R"({"prompt_tokens":18446744073709551615})",
                          R"({"prompt_tokens":5,"completion_tokens":5,"total_tokens":3})", R"({})", R"([])", R"(null)"}) {
    INFO(bad);
    CHECK_FALSE(read_usage(json::parse(bad), 1000, Api::openai));
  }
  CHECK_FALSE(read_usage(json::parse(R"({"input_tokens":5})"), 100, Api::anthropic));  // no output count
  CHECK_FALSE(read_usage(json::parse(R"({"input_tokens":5,"output_tokens":2,"cache_read_input_tokens":-3})"), 100, Api::anthropic));
}

TEST_CASE("server-sent events: the same events however the bytes are cut", "[gateway][sse]") {
  const std::string stream =
      "event: message_start\r\ndata: {\"a\":1}\r\n\r\n"
      ": a comment\n\n"
      "data: first line\ndata:second line\n\n"
      "id: 7\rdata: cr only\r\r"
      "data: [DONE]\n\n";
  const auto whole = split_all({stream});
  REQUIRE(whole.size() == 5);
  CHECK(whole[0].name == "message_start");
  CHECK(whole[0].data == "{\"a\":1}");
  CHECK(whole[0].raw == "event: message_start\r\ndata: {\"a\":1}\r\n\r\n");
  CHECK(whole[1].data.empty());
  CHECK(whole[2].data == "first line\nsecond line");
  CHECK(whole[3].data == "cr only");
  CHECK(whole[4].data == "[DONE]");
  std::string joined;
  for (const auto& e : whole) joined += e.raw;
  CHECK(joined == stream);  // forwarded byte for byte
  // Every cut into two pieces, and one byte at a time.
  for (std::size_t cut = 0; cut <= stream.size(); ++cut) {
    const auto two = split_all({stream.substr(0, cut), stream.substr(cut)});
    REQUIRE(two.size() == whole.size());
    for (std::size_t i = 0; i < two.size(); ++i) {
      CHECK(two[i].raw == whole[i].raw);
      CHECK(two[i].data == whole[i].data);
    }
  }
  std::vector<std::string> bytes;
  for (char c : stream) bytes.emplace_back(1, c);
  const auto one = split_all(bytes);
  REQUIRE(one.size() == whole.size());
  for (std::size_t i = 0; i < one.size(); ++i) CHECK(one[i].raw == whole[i].raw);
}

TEST_CASE("server-sent events: an unterminated tail is kept, an oversized event refused", "[gateway][sse]") {
  SseSplitter s(64);
  s.feed("data: a\n\ndata: b");
  REQUIRE(s.next());
  CHECK_FALSE(s.next());
  CHECK(s.rest() == "data: b");
  // A "\r" at the end of what arrived may be the first half of "\r\n": not yet an event.
  SseSplitter cr(64);
  cr.feed("data: x\r\r");
  CHECK_FALSE(cr.next());
  cr.feed("data: y\r");
  const auto x = cr.next();
  REQUIRE(x);
  CHECK(x->raw == "data: x\r\r");
  CHECK_FALSE(cr.next());
  cr.feed("\n\r\n");
  const auto y = cr.next();
  REQUIRE(y);
  CHECK(y->raw == "data: y\r\n\r\n");
  SseSplitter small(16);
  small.feed("data: 0123456");
  CHECK_THROWS_AS(small.feed("789abcdef"), std::length_error);
  // Completed events do not count against the bound once read.
  SseSplitter many(16);
  for (int i = 0; i < 1000; ++i) {
    many.feed("data: 12345\n\n");
    REQUIRE(many.next());
  }
}

TEST_CASE("stream usage: OpenAI's final chunk, dropped when the gateway asked for it", "[gateway][sse]") {
  const std::vector<std::string> events = {
      R"({"choices":[{"index":0,"delta":{"content":"hi"}}],"usage":null})",
      R"({"choices":[{"index":0,"delta":{},"finish_reason":"stop"}],"usage":null})",
      R"({"choices":[],"usage":{"prompt_tokens":11,"completion_tokens":4,"total_tokens":15}})", "[DONE]"};
  for (bool drop : {true, false}) {
    StreamUsage u(Api::openai, 1000, drop);
    std::vector<bool> forwarded;
    for (const auto& d : events) {
      CHECK_FALSE(u.complete());
      forwarded.push_back(u.on_event(SseEvent{"", "", d}));
    }
    CHECK(forwarded == std::vector<bool>{true, true, !drop, true});
    REQUIRE(u.complete());
    CHECK(u.complete()->total() == 15);
  }
  // No [DONE]: the stream did not end; no usage chunk: nothing known.
  StreamUsage cut(Api::openai, 1000, true);
  cut.on_event(SseEvent{"", "", events[2]});
  CHECK_FALSE(cut.complete());
  StreamUsage none(Api::openai, 1000, false);
  none.on_event(SseEvent{"", "", events[0]});
  none.on_event(SseEvent{"", "", "[DONE]"});
  CHECK(none.ended());
  CHECK_FALSE(none.complete());
  // A hostile count is not believed.
  StreamUsage bad(Api::openai, 1000, true);
  bad.on_event(SseEvent{"", "", R"({"choices":[],"usage":{"prompt_tokens":-5,"completion_tokens":4}})"});
  bad.on_event(SseEvent{"", "", "[DONE]"});
  CHECK(bad.invalid());
  CHECK_FALSE(bad.complete());
  // Responses API: the completed response carries the usage.
  StreamUsage responses(Api::openai, 1000, false);
  responses.on_event(SseEvent{"", "response.completed",
                              R"({"type":"response.completed","response":{"usage":{"input_tokens":3,"output_tokens":9,"total_tokens":12}}})"});
  REQUIRE(responses.complete());
  CHECK(responses.complete()->total() == 12);
}

TEST_CASE("stream usage: Anthropic's message_start input and message_delta output", "[gateway][sse]") {
  StreamUsage u(Api::anthropic, 100000, false);
  CHECK(u.on_event(SseEvent{"", "message_start",
                            R"({"type":"message_start","message":{"usage":{"input_tokens":120,"cache_creation_input_tokens":30,"output_tokens":1}}})"}));
  REQUIRE(u.started());
  CHECK(u.started()->input == 150);
  CHECK_FALSE(u.complete());
  u.on_event(SseEvent{"", "content_block_delta", R"({"type":"content_block_delta","delta":{"type":"text_delta","text":"x"}})"});
  u.on_event(SseEvent{"", "message_delta", R"({"type":"message_delta","usage":{"output_tokens":40}})"});
  CHECK_FALSE(u.complete());  // not ended yet
  u.on_event(SseEvent{"", "message_delta", R"({"type":"message_delta","usage":{"output_tokens":57}})"});  // cumulative
  u.on_event(SseEvent{"", "message_stop", R"({"type":"message_stop"})"});
  REQUIRE(u.complete());
  CHECK(u.complete()->input == 150);
  CHECK(u.complete()->output == 57);
  // Cut after message_start: the input is known, the output is not.
  StreamUsage cut(Api::anthropic, 100000, false);
  cut.on_event(SseEvent{"", "message_start", R"({"type":"message_start","message":{"usage":{"input_tokens":9,"output_tokens":1}}})"});
  cut.on_event(SseEvent{"", "message_delta", R"({"type":"message_delta","usage":{"output_tokens":2000000}})"});  // over the bound
  cut.on_event(SseEvent{"", "message_stop", R"({"type":"message_stop"})"});
  CHECK(cut.invalid());
  CHECK_FALSE(cut.complete());
  REQUIRE(cut.started());
  CHECK(cut.started()->input == 9);
  StreamUsage err(Api::anthropic, 100, false);
  err.on_event(SseEvent{"", "error", R"({"type":"error","error":{"type":"overloaded_error"}})"});
  CHECK(err.failed());
}
