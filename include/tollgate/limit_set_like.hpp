#pragma once
// tollgate::limit_set_like: the shape every limit-set backend has (LimitSet in
// process, redis::RedisLimitSet in Redis), so generic code takes either.

#include <chrono>
#include <concepts>
#include <cstddef>
#include <string>

#include "costs.hpp"
#include "limit.hpp"
#include "permit.hpp"
#include "result.hpp"

namespace tollgate {

/// A set of named dimensions taken all or nothing, with LimitSet's shape:
/// the same acquisition calls with the same results (`AcquireResult`,
/// `Permit<Costs>`), and the same settling and feedback calls (whose own
/// return values may say more for a distributed backend, e.g. whether the
/// store answered).
template <class S>
concept limit_set_like = requires(S& s, const S& cs, const Costs& c, std::size_t i, std::chrono::nanoseconds d,
                                  const AcquireResult& r) {
  { cs.size() } -> std::convertible_to<std::size_t>;
  { cs.name(i) } -> std::convertible_to<std::string>;
  { cs.limit(i) } -> std::same_as<Limit>;
  { cs.message(r) } -> std::same_as<std::string>;
  { s.try_acquire(c) } -> std::same_as<AcquireResult>;
  { s.try_acquire_permit(c) } -> std::same_as<Permit<Costs>>;
  { s.acquire(c).await_resume() } -> std::same_as<AcquireResult>;
  { s.acquire_for(c, d).await_resume() } -> std::same_as<AcquireResult>;
  { s.acquire_permit(c, d).await_resume() } -> std::same_as<Permit<Costs>>;
  { s.acquire_blocking(c, d) } -> std::same_as<AcquireResult>;
  s.refund(c);
  s.charge(c);
  s.settle(c, c);
  s.pause_for(d);
  s.limit_remaining(i, 1.0);
};

}  // namespace tollgate
