// See test_link_a.cpp.
#include <tollgate/testing/manual_clock.hpp>
#include <tollgate/testing/manual_scheduler.hpp>
#include <tollgate/tollgate.hpp>

double tollgate_link_b_available() {
  tollgate::TokenBucket<tollgate::testing::ManualClock> b(tollgate::Limit{3, 1});
  return b.available();
}
