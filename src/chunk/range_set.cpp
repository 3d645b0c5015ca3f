#include "chunk/range_set.h"

#include <algorithm>
#include <iterator>

namespace spead2::chunk
{

range_set::result range_set::insert(std::uint64_t begin, std::uint64_t end)
{
    // First range starting after begin; the one before it (if any) starts at or before begin.
    auto next = std::upper_bound(ranges.begin(), ranges.end(), std::make_pair(begin, UINT64_MAX));
    if (next != ranges.begin())
    {
        auto prev = std::prev(next);
        if (prev->first == begin && prev->second == end)
            return result::duplicate;
        if (prev->second > begin)
            return result::overlap;
    }
    if (next != ranges.end() && next->first < end)
        return result::overlap;
    const bool join_prev = next != ranges.begin() && std::prev(next)->second == begin;
    const bool join_next = next != ranges.end() && next->first == end;
    if (join_prev && join_next)
    {
        std::prev(next)->second = next->second;
        ranges.erase(next);
    }
    else if (join_prev)
        std::prev(next)->second = end;
    else if (join_next)
        next->first = begin;
    else
        ranges.insert(next, {begin, end});
    return result::added;
}

} // namespace spead2::chunk
