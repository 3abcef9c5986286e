#pragma once
// tollgate: header-only C++20 token-bucket rate limiting. The umbrella header.

#include "acquire_operation.hpp"  // IWYU pragma: export
#include "biased_mutex.hpp"
#include "bucket_registry.hpp"  // IWYU pragma: export
#include "coarse_clock.hpp"     // IWYU pragma: export
#include "costs.hpp"            // IWYU pragma: export
#include "limit.hpp"            // IWYU pragma: export
#include "limit_set.hpp"        // IWYU pragma: export
#include "limit_set_like.hpp"   // IWYU pragma: export
#include "listener.hpp"         // IWYU pragma: export
#include "mutex_traits.hpp"     // IWYU pragma: export
#include "null_mutex.hpp"       // IWYU pragma: export
#include "output_estimator.hpp" // IWYU pragma: export
#include "permit.hpp"           // IWYU pragma: export
#include "keyed_costs.hpp"      // IWYU pragma: export
#include "keyed_limit_sets.hpp" // IWYU pragma: export
#include "keys.hpp"             // IWYU pragma: export
#include "reservation.hpp"      // IWYU pragma: export
#include "shared_limit_set.hpp" // IWYU pragma: export
#include "result.hpp"           // IWYU pragma: export
#include "scheduler.hpp"        // IWYU pragma: export
#include "spin_mutex.hpp"       // IWYU pragma: export
#include "stop_token.hpp"       // IWYU pragma: export
#include "timer_thread_scheduler.hpp"  // IWYU pragma: export
#include "token_bucket.hpp"     // IWYU pragma: export
#include "upstream_feedback.hpp"  // IWYU pragma: export
#include "upstream_headers.hpp"  // IWYU pragma: export
#include "version.hpp"          // IWYU pragma: export
