#pragma once
// Catch2 v3 spelling on top of whichever Catch2 is installed (v3 preferred;
// Debian 12 ships 2.13, whose single header offers the same macros).
#if __has_include(<catch2/catch_test_macros.hpp>)
#include <catch2/catch_template_test_macros.hpp>
#include <catch2/catch_test_macros.hpp>
#include <catch2/generators/catch_generators.hpp>
#include <catch2/matchers/catch_matchers_string.hpp>
#else
#include <catch2/catch.hpp>
#endif
