// The rate-limited log of packets a stream drops while assembling heaps
// (see common/log_limiter.h), shared by chunk and heap streams so both
// name and summarise the same kinds.
#pragma once

#include <cstddef>

#include "common/log_limiter.h"

namespace spead2::chunk
{

enum drop_kind : std::size_t
{
    DROP_UNSIZED, DROP_FIRST_OFFSET, DROP_LENGTH_CHANGED, DROP_FLAVOUR_CHANGED, DROP_TOO_SMALL,
    DROP_OUT_OF_ORDER, DROP_GAP, DROP_DUPLICATE, DROP_OVERLAP, DROP_OUT_OF_RANGE, DROP_INCOMPLETE_HEAP
};

/// A log_limiter for the drop kinds above (in that order).
inline log_limiter make_drop_log()
{
    return log_limiter("packets dropped", {
        {"without HEAP_LENGTH", log_level::debug},
        {"first packet not at offset 0", log_level::debug},
        {"heap length changed", log_level::info},
        {"flavour changed", log_level::info},
        {"heap length too small for its items", log_level::info},
        {"out-of-order", log_level::warning},
        {"gap in heap", log_level::debug},
        {"duplicate", log_level::debug},
        {"overlapping", log_level::warning},
        {"heaps placed out of range", log_level::warning},
        {"incomplete heaps (contiguous_only)", log_level::warning}});
}

} // namespace spead2::chunk
