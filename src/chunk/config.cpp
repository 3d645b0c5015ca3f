#include "chunk/config.h"

#include <stdexcept>

namespace spead2::chunk
{

std::vector<stat_config> default_stats()
{
    using m = stat_config::mode;
    return {
        {"heaps", m::COUNTER},
        {"incomplete_heaps_evicted", m::COUNTER},
        {"incomplete_heaps_flushed", m::COUNTER},
        {"packets", m::COUNTER},
        {"batches", m::COUNTER},
        {"max_batch", m::MAXIMUM},
        {"single_packet_heaps", m::COUNTER},
        {"search_dist", m::COUNTER},
        {"worker_blocked", m::COUNTER},
    };
}

stream_config::stream_config()
    : stats(std::make_shared<const std::vector<stat_config>>(default_stats()))
{
}

stream_config &stream_config::set_max_heaps(std::size_t v)
{
    if (v == 0)
        throw std::invalid_argument("max_heaps cannot be 0");
    max_heaps = v;
    return *this;
}

stream_config &stream_config::set_substreams(std::size_t v)
{
    if (v == 0)
        throw std::invalid_argument("substreams cannot be 0");
    substreams = v;
    return *this;
}

stream_config &stream_config::set_bug_compat(int v)
{
    if (v & ~0x7)
        throw std::invalid_argument("unknown compatibility bits in bug_compat");
    bug_compat = v;
    return *this;
}

stream_config &stream_config::set_memcpy(int id)
{
    memcpy_by_id(id);  // validates
    memcpy_id = id;
    return *this;
}

std::size_t stream_config::add_stat(const std::string &name, stat_config::mode mode)
{
    for (const auto &s : *stats)
        if (s.name == name)
            throw std::invalid_argument("A statistic called " + name + " already exists");
    auto copy = std::make_shared<std::vector<stat_config>>(*stats);
    copy->emplace_back(name, mode);
    stats = std::move(copy);
    return stats->size() - 1;
}

std::size_t stream_config::get_stat_index(const std::string &name) const
{
    for (std::size_t i = 0; i < stats->size(); i++)
        if ((*stats)[i].name == name)
            return i;
    throw std::out_of_range("Statistic " + name + " does not exist");
}

chunk_stream_config &chunk_stream_config::set_max_chunks(std::size_t v)
{
    if (v == 0)
        throw std::invalid_argument("max_chunks cannot be 0");
    max_chunks = v;
    return *this;
}

chunk_stream_config &chunk_stream_config::enable_packet_presence(std::size_t payload_size)
{
    if (payload_size == 0)
        throw std::invalid_argument("payload_size must not be zero");
    packet_presence_payload_size = payload_size;
    return *this;
}

} // namespace spead2::chunk
