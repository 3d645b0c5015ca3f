// What every receive stream offers its owner (and the Python _Stream base):
// attaching readers, starting, stopping, statistics and the effective
// configuration.  Chunk streams and heap streams both implement it, so the
// bindings handle readers once for every kind of stream.
#pragma once

#include <cstdint>
#include <functional>
#include <memory>
#include <vector>

#include "chunk/config.h"
#include "transport/reader.h"

namespace spead2::transport
{

using reader_factory = std::function<std::shared_ptr<reader>(packet_sink &, worker &)>;

class stream_control
{
public:
    virtual ~stream_control() = default;
    /// Construct and attach a reader; false (and nothing made) once stopped.
    virtual bool add_reader(const reader_factory &factory) = 0;
    /// Start readers held back by explicit_start.
    virtual void start() = 0;
    /// Stop from the user's side.
    virtual void stop() = 0;
    /// A snapshot of the statistics, in the order of get_config().get_stats().
    virtual std::vector<std::uint64_t> get_stats() const = 0;
    /// The effective configuration.
    virtual const chunk::stream_config &get_config() const = 0;
};

} // namespace spead2::transport
