#pragma once
// DimensionNames: a limit set's named dimensions (names, lookup by name,
// cost vectors by name, messages naming the dimension), checked once; shared
// by LimitSet and SharedLimitSet.

#include <array>
#include <initializer_list>
#include <sstream>
#include <stdexcept>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include "../costs.hpp"
#include "../limit.hpp"
#include "../result.hpp"

namespace tollgate {

/// One named dimension of a LimitSet.
struct Dimension {
  std::string name;  ///< e.g. "requests", "tokens"; unique within the set
  Limit limit;
};

namespace detail {

class DimensionNames {
 public:
  /// Throws `std::invalid_argument` (prefixed by `who`, e.g.
  /// "LimitSet::LimitSet") for no dimensions, more than `max_dimensions`,
  /// an empty or repeated name, or an invalid limit.
  DimensionNames(std::vector<Dimension> dims, const char* who) : dims_(std::move(dims)) {
    if (dims_.empty() || dims_.size() > max_dimensions) {
      std::ostringstream os;
      os << who << ": " << dims_.size() << " dimensions; between 1 and " << max_dimensions << " allowed";
      throw std::invalid_argument(os.str());
    }
    for (std::size_t i = 0; i < dims_.size(); ++i) {
      if (dims_[i].name.empty())
        throw std::invalid_argument(std::string(who) + ": dimension " + std::to_string(i) + " has no name");
      for (std::size_t j = 0; j < i; ++j)
        if (dims_[j].name == dims_[i].name)
          throw std::invalid_argument(std::string(who) + ": two dimensions named \"" + dims_[i].name + "\"");
      dims_[i].limit.validate((std::string(who) + " (dimension \"" + dims_[i].name + "\")").c_str());
    }
    zeros_ = Costs::zeros(dims_.size());
  }

  std::size_t size() const noexcept { return dims_.size(); }
  const std::string& name(std::size_t i) const { return dims_.at(i).name; }
  /// The limits as given at construction.
  std::vector<Limit> limits() const {
    std::vector<Limit> l;
    for (const Dimension& d : dims_) l.push_back(d.limit);
    return l;
  }

  /// The index of the dimension called `name`; throws `std::out_of_range` naming it.
  std::size_t index(std::string_view name, const char* who) const {
    for (std::size_t i = 0; i < dims_.size(); ++i)
      if (dims_[i].name == name) return i;
    throw std::out_of_range(std::string(who) + ": no dimension named \"" + std::string(name) + "\"");
  }

  /// A cost vector given by dimension name; dimensions not named cost 0.
  Costs costs(std::initializer_list<std::pair<std::string_view, double>> named, const char* who) const {
    Costs c = Costs::zeros(dims_.size());
    std::array<bool, max_dimensions> given{};
    for (const auto& [name, value] : named) {
      const std::size_t i = index(name, who);
      if (given[i]) throw std::invalid_argument(std::string(who) + ": dimension \"" + std::string(name) + "\" given twice");
      given[i] = true;
      c[i] = value;
    }
    return c;
  }

  /// `r.message()` with the dimension named.
  std::string message(const AcquireResult& r) const {
    return r.message(r.dimension() < dims_.size() ? std::string_view(dims_[r.dimension()].name) : std::string_view());
  }

  /// Throws `std::out_of_range` unless `i` is a dimension's index.
  void check_index(const char* who, std::size_t i) const {
    if (i < dims_.size()) return;
    std::ostringstream os;
    os << who << ": dimension " << i << " out of range (the set has " << dims_.size() << ")";
    throw std::out_of_range(os.str());
  }

  const Costs& zeros() const noexcept { return zeros_; }

 private:
  std::vector<Dimension> dims_;
  Costs zeros_;
};

}  // namespace detail
}  // namespace tollgate
