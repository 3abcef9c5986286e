// Two translation units include every header: linking them proves that no
// header defines a non-inline function or variable.
#include <tollgate/testing/manual_clock.hpp>
#include <tollgate/testing/manual_scheduler.hpp>
#include <tollgate/tollgate.hpp>

#include "catch.hpp"

double tollgate_link_b_available();

TEST_CASE("link: two TUs share the headers", "[link]") {
  tollgate::TokenBucket<tollgate::testing::ManualClock, tollgate::NullMutex> b(tollgate::Limit{4, 1});
  CHECK(b.available() == 4);
  CHECK(tollgate_link_b_available() == 3);
}
