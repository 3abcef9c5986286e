#pragma once
// The gateway's metrics in the Prometheus text format, on prometheus-cpp:
// requests per tier and key (a bounded number of keys, by fingerprint), the
// wait for admission, the upstream's answers, tokens estimated and settled,
// streams, each shared dimension's rate and level, and the shared set's own
// decisions, heard through a tollgate::Listener.

#include <prometheus/counter.h>
#include <prometheus/gauge.h>
#include <prometheus/histogram.h>
#include <prometheus/registry.h>
#include <prometheus/text_serializer.h>

#include <cstddef>
#include <map>
#include <memory>
#include <set>
#include <string>
#include <string_view>

#include <tollgate/keyed_costs.hpp>
#include <tollgate/listener.hpp>

namespace llm {

class GatewayMetrics final : public tollgate::Listener<tollgate::KeyedCosts> {
 public:
  /// Keys get a label of their own (their fingerprint) up to `max_keys`
  /// distinct ones; later keys count under key="other".
  explicit GatewayMetrics(std::size_t max_keys)
      : max_keys_(max_keys),
        registry_(std::make_shared<prometheus::Registry>()),
        requests_(prometheus::BuildCounter()
                      .Name("tollgate_gateway_requests_total")
                      .Help("Requests for a billed endpoint by a known key, by outcome: admitted (forwarded), "
                            "refused (429 from the gateway), invalid (400)")
                      .Register(*registry_)),
        rejected_(prometheus::BuildCounter()
                      .Name("tollgate_gateway_rejected_total")
                      .Help("Requests answered by the gateway before admission (unknown key, path, method; "
                            "malformed or oversized), by status")
                      .Register(*registry_)),
        queued_(prometheus::BuildGauge()
                    .Name("tollgate_gateway_queued")
                    .Help("Requests waiting for admission now")
                    .Register(*registry_)),
        wait_(prometheus::BuildHistogram()
                  .Name("tollgate_gateway_wait_seconds")
                  .Help("Time from a request's body to its admission (admitted requests)")
                  .Register(*registry_)),
        upstream_(prometheus::BuildCounter()
                      .Name("tollgate_gateway_upstream_responses_total")
                      .Help("Answers from the upstream, by HTTP status (429: the upstream refused)")
                      .Register(*registry_)),
        upstream_failures_(prometheus::BuildCounter()
                               .Name("tollgate_gateway_upstream_failures_total")
                               .Help("Calls that got no answer from the upstream (connect, TLS, read)")
                               .Register(*registry_)
                               .Add({})),
        connections_(prometheus::BuildCounter()
                         .Name("tollgate_gateway_upstream_connections_total")
                         .Help("Upstream connections: opened, reused from the pool, stale (found closed or "
                               "idle too long), retried (a pooled one died before the request left), and "
                               "TLS handshakes: tls_resumed (a session reused), tls_full")
                         .Register(*registry_)),
        reloads_(prometheus::BuildCounter()
                     .Name("tollgate_gateway_reloads_total")
                     .Help("Configuration reloads (SIGHUP): ok, rejected (the old configuration stays)")
                     .Register(*registry_)),
        tokens_(prometheus::BuildCounter()
                    .Name("tollgate_gateway_tokens_total")
                    .Help("Tokens reserved at admission (estimated) and charged at completion (settled)")
                    .Register(*registry_)),
        streams_(prometheus::BuildCounter()
                     .Name("tollgate_gateway_streams_total")
                     .Help("Streamed answers, by how they ended: complete, client_gone, cut (upstream)")
                     .Register(*registry_)),
        rate_(prometheus::BuildGauge()
                  .Name("tollgate_gateway_limit_rate")
                  .Help("A shared dimension's refill rate now (per second; adapted by the upstream's answers)")
                  .Register(*registry_)),
        capacity_(prometheus::BuildGauge()
                      .Name("tollgate_gateway_limit_capacity")
                      .Help("A shared dimension's burst capacity")
                      .Register(*registry_)),
        level_(prometheus::BuildGauge()
                   .Name("tollgate_gateway_limit_available")
                   .Help("A shared dimension's unreserved tokens now (0 while paused or while requests wait)")
                   .Register(*registry_)),
        events_(prometheus::BuildCounter()
                    .Name("tollgate_gateway_set_events_total")
                    .Help("The shared limit set's decisions: admitted, waited, refused, cancelled, paused")
                    .Register(*registry_)),
        paused_(prometheus::BuildCounter()
                    .Name("tollgate_gateway_paused_seconds_total")
                    .Help("Pauses of the shared set ordered by the upstream's 429s and 503s")
                    .Register(*registry_)
                    .Add({})) {
    for (const char* kind : {"admitted", "waited", "refused", "cancelled", "paused"})
      event_[kind] = &events_.Add({{"kind", kind}});
  }

  void request(const std::string& tier, const std::string& key, const char* outcome) {
    requests_.Add({{"tier", tier}, {"key", key_label(key)}, {"outcome", outcome}}).Increment();
  }
  void rejected(unsigned status) { rejected_.Add({{"status", std::to_string(status)}}).Increment(); }
  prometheus::Gauge& queued(const std::string& tier) { return queued_.Add({{"tier", tier}}); }
  void waited(const std::string& tier, double seconds) {
    static const prometheus::Histogram::BucketBoundaries bounds{0.001, 0.005, 0.01, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30};
    wait_.Add({{"tier", tier}}, bounds).Observe(seconds);
  }
  void upstream(unsigned status) { upstream_.Add({{"status", std::to_string(status)}}).Increment(); }
  void upstream_failure() { upstream_failures_.Increment(); }
  void reload(const char* result) { reloads_.Add({{"result", result}}).Increment(); }
  void connection(const char* event) { connections_.Add({{"event", event}}).Increment(); }
  void tokens(const std::string& tier, double estimated, double settled) {
    tokens_.Add({{"tier", tier}, {"kind", "estimated"}}).Increment(estimated);
    tokens_.Add({{"tier", tier}, {"kind", "settled"}}).Increment(settled);
  }
  void stream(const char* outcome) { streams_.Add({{"outcome", outcome}}).Increment(); }
  void dimension(const std::string& name, double rate, double capacity, double available) {
    rate_.Add({{"dimension", name}}).Set(rate);
    capacity_.Add({{"dimension", name}}).Set(capacity);
    level_.Add({{"dimension", name}}).Set(available);
  }

  /// The shared set's events (a tollgate::Listener): counted by kind; a
  /// pause's length is added up.
  void on_event(const tollgate::BucketEvent<tollgate::KeyedCosts>& e) noexcept override {
    const char* kind = e.kind == tollgate::BucketEventKind::admitted    ? "admitted"
                       : e.kind == tollgate::BucketEventKind::waited    ? "waited"
                       : e.kind == tollgate::BucketEventKind::refused   ? "refused"
                       : e.kind == tollgate::BucketEventKind::cancelled ? "cancelled"
                                                                        : "paused";
    event_[kind]->Increment();
    if (e.kind == tollgate::BucketEventKind::paused) paused_.Increment(std::chrono::duration<double>(e.waited).count());
  }

  /// Everything, in the Prometheus text format.
  std::string scrape() const { return prometheus::TextSerializer().Serialize(registry_->Collect()); }

 private:
  std::string key_label(const std::string& key) {
    if (labelled_.count(key)) return key;
    if (labelled_.size() < max_keys_) {
      labelled_.insert(key);
      return key;
    }
    return "other";
  }

  std::size_t max_keys_;
  std::set<std::string> labelled_;
  std::shared_ptr<prometheus::Registry> registry_;
  prometheus::Family<prometheus::Counter>& requests_;
  prometheus::Family<prometheus::Counter>& rejected_;
  prometheus::Family<prometheus::Gauge>& queued_;
  prometheus::Family<prometheus::Histogram>& wait_;
  prometheus::Family<prometheus::Counter>& upstream_;
  prometheus::Counter& upstream_failures_;
  prometheus::Family<prometheus::Counter>& connections_;
  prometheus::Family<prometheus::Counter>& reloads_;
  prometheus::Family<prometheus::Counter>& tokens_;
  prometheus::Family<prometheus::Counter>& streams_;
  prometheus::Family<prometheus::Gauge>& rate_;
  prometheus::Family<prometheus::Gauge>& capacity_;
  prometheus::Family<prometheus::Gauge>& level_;
  prometheus::Family<prometheus::Counter>& events_;
  prometheus::Counter& paused_;
  std::map<std::string, prometheus::Counter*> event_;
};

}  // namespace llm
