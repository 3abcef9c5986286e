#pragma once
// Limit: the capacity and refill rate of a token bucket, validated.

#include <cmath>
#include <sstream>
#include <stdexcept>
#include <string>

namespace tollgate {

/// The shape of a token bucket: `capacity` cost units of burst, refilled at
/// `rate` cost units per second. A bucket starts full.
///
/// Both values must be finite and greater than zero, and `capacity / rate` (the
/// time an empty bucket takes to refill) must not exceed `max_refill_seconds`,
/// so that every wait fits a 64-bit nanosecond clock. `validate()` throws
/// `std::invalid_argument` naming the caller and the bad value otherwise.
struct Limit {
  double capacity = 1;  ///< burst size, in cost units (> 0)
  double rate = 1;      ///< refill, in cost units per second (> 0)

  /// About 146 years: 2^62 ns. Longer refill windows are rejected.
  static constexpr double max_refill_seconds = 4611686018.427387904;

  /// `n` per second, with a burst of `capacity` (default: one second's worth).
  static Limit per_second(double n, double capacity = 0) {
    return {capacity > 0 ? capacity : n, n};
  }
  /// `n` per minute, with a burst of `capacity` (default: the whole minute).
  /// OpenAI's and Anthropic's RPM and TPM limits are of this form.
  static Limit per_minute(double n, double capacity = 0) {
    return {capacity > 0 ? capacity : n, n / 60.0};
  }
  /// `n` per hour, with a burst of `capacity` (default: the whole hour).
  static Limit per_hour(double n, double capacity = 0) {
    return {capacity > 0 ? capacity : n, n / 3600.0};
  }

  /// Throws `std::invalid_argument("<who>: <what> ...")` unless this limit is usable.
  void validate(const char* who) const {
    check_positive(who, "capacity", capacity);
    check_positive(who, "rate", rate);
    const double window = capacity / rate;
    if (!(window <= max_refill_seconds)) {
      std::ostringstream os;
      os << who << ": capacity / rate = " << window
         << " s exceeds the longest refill window (" << max_refill_seconds
         << " s, 2^62 ns); raise the rate or lower the capacity";
      throw std::invalid_argument(os.str());
    }
  }

  /// Throws `std::invalid_argument` unless `value` is finite and > 0.
  static void check_positive(const char* who, const char* what, double value) {
    if (std::isfinite(value) && value > 0) return;
    std::ostringstream os;
    os << who << ": " << what << " must be finite and greater than zero, got " << value;
    throw std::invalid_argument(os.str());
  }

  friend bool operator==(const Limit&, const Limit&) = default;
};

}  // namespace tollgate
