#pragma once
// tollgate/asio.hpp: tollgate on standalone Asio (1.22+): `async_acquire`
// with any completion token, and `TimerScheduler`, a bucket timer on an Asio
// executor. Namespace tollgate::asio. CMake target `tollgate::asio`; the core
// never includes Asio. For Boost.Asio include <tollgate/boost_asio.hpp>
// (namespace tollgate::boost_asio); the two can be used side by side.
//
// clang 14 with Asio 1.22 needs ASIO_HAS_CO_AWAIT=1 for `use_awaitable`
// (the tollgate::asio target defines it for clang).

#include <asio/any_io_executor.hpp>
#include <asio/associated_cancellation_slot.hpp>
#include <asio/associated_executor.hpp>
#include <asio/async_result.hpp>
#include <asio/basic_waitable_timer.hpp>
#include <asio/cancellation_type.hpp>
#include <asio/execution.hpp>
#include <asio/post.hpp>
#include <asio/strand.hpp>
#include <asio/system_executor.hpp>

#define TOLLGATE_NET ::asio
#define TOLLGATE_NET_BINDING asio
#include "detail/asio_binding.ipp"
#undef TOLLGATE_NET
#undef TOLLGATE_NET_BINDING
