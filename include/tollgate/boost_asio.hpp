#pragma once
// tollgate/boost_asio.hpp: tollgate on Boost.Asio (1.81+): `async_acquire`
// with any completion token, and `TimerScheduler`, a bucket timer on an Asio
// executor. Namespace tollgate::boost_asio; the same API as tollgate/asio.hpp
// (standalone Asio). CMake target `tollgate::asio`.

#include <boost/asio/any_io_executor.hpp>
#include <boost/asio/associated_cancellation_slot.hpp>
#include <boost/asio/associated_executor.hpp>
#include <boost/asio/async_result.hpp>
#include <boost/asio/basic_waitable_timer.hpp>
#include <boost/asio/cancellation_type.hpp>
#include <boost/asio/execution.hpp>
#include <boost/asio/post.hpp>
#include <boost/asio/strand.hpp>
#include <boost/asio/system_executor.hpp>

#define TOLLGATE_NET ::boost::asio
#define TOLLGATE_NET_BINDING boost_asio
#include "detail/asio_binding.ipp"
#undef TOLLGATE_NET
#undef TOLLGATE_NET_BINDING
