// OutputEstimator: a conservative quantile of the real output per key,
// capped at max_tokens, deterministic and bounded.

#include <cmath>
#include <stdexcept>
#include <string>

#include <tollgate/output_estimator.hpp>

#include "catch.hpp"

using tollgate::OutputEstimator;

TEST_CASE("output estimator: max_tokens until learned, then a p95 that errs high by at most one bin",
          "[estimator]") {
  OutputEstimator est;  // p95 after 20 answers
  CHECK(est.estimate("chat", 4096) == 4096);
  // 100 answers: 100, 102, ..., 298 tokens (p95 is about 290).
  for (int i = 0; i < 100; ++i) {
    if (i == 19) CHECK(est.estimate("chat", 4096) == 4096);  // 19 answers: not yet
    est.observe("chat", 100 + 2 * i);
  }
  const double p95 = est.estimate("chat", 4096);
  CHECK(p95 >= 290);
  CHECK(p95 <= 290 * 1.19);
  CHECK(est.estimate("chat", 200) == 200);  // never above max_tokens
  CHECK(est.estimate("other", 1000) == 1000);  // another key learns separately
  CHECK(est.keys() == 1);
}

TEST_CASE("output estimator: counts halve every window, so the estimate follows a drifting workload",
          "[estimator]") {
  OutputEstimator est({.quantile = 0.9, .min_samples = 10, .window = 50, .max_keys = 8});
  for (int i = 0; i < 200; ++i) est.observe("m", 2000);
  CHECK(est.estimate("m", 4096) >= 2000);
  for (int i = 0; i < 400; ++i) est.observe("m", 100);  // answers got short
  const double after = est.estimate("m", 4096);
  CHECK(after >= 100);
  CHECK(after < 2000);
}

TEST_CASE("output estimator: keys beyond max_keys share one histogram; bad input is refused", "[estimator]") {
  OutputEstimator est({.quantile = 1, .min_samples = 1, .window = 100, .max_keys = 2});
  est.observe("a", 10);
  est.observe("b", 20);
  est.observe("c", 500);  // a third key: the shared histogram
  est.observe("d", 600);
  CHECK(est.keys() == 2);
  CHECK(est.estimate("a", 4096) < 16);
  CHECK(est.estimate("zzz", 4096) >= 600);  // an unlearned key past the cap reads the shared one
  CHECK_THROWS_WITH(est.observe("a", -1), "OutputEstimator::observe: output_tokens must be finite and >= 0, got -1");
  CHECK_THROWS_AS(est.estimate("a", std::nan("")), std::invalid_argument);
  CHECK_THROWS_AS(OutputEstimator({.quantile = 0}), std::invalid_argument);
  CHECK_THROWS_AS(OutputEstimator({.quantile = 0.5, .min_samples = 10, .window = 5}), std::invalid_argument);
}
