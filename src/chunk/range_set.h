// The received-range set of a heap (out-of-order mode): which byte ranges of
// the heap's payload have arrived, kept sorted, disjoint and merged, so that
// duplicate and overlapping packets can be told apart from new ones.
#pragma once

#include <cstdint>
#include <utility>
#include <vector>

namespace spead2::chunk
{

class range_set
{
    std::vector<std::pair<std::uint64_t, std::uint64_t>> ranges;   ///< [begin, end), sorted, merged

public:
    enum class result
    {
        added,       ///< new bytes (recorded)
        duplicate,   ///< exactly a range already received (nothing recorded)
        overlap      ///< partly overlaps received bytes (nothing recorded)
    };

    /// Record [begin, end) (begin < end) unless it meets bytes already received.
    result insert(std::uint64_t begin, std::uint64_t end);
    void clear() { ranges.clear(); }
    bool empty() const { return ranges.empty(); }
    std::size_t size() const { return ranges.size(); }
    const std::pair<std::uint64_t, std::uint64_t> &operator[](std::size_t i) const { return ranges[i]; }
};

} // namespace spead2::chunk
