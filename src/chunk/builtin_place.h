// Built-in place callbacks for the common layouts, so that they need no
// numba, scipy or JIT.  Each is a plain C function of the reference's
// "void (void *, size_t, void *)" kind, whose context points at its
// parameters; they place heaps exactly as the equivalent numba callbacks of
// spead2_recv do (tests/test_builtin_place.py checks that).
//
// Both expect ChunkStreamConfig.items to be the list given by their
// parameters' items() (the key item first, HEAP_LENGTH last), reject heaps
// whose HEAP_LENGTH is not heap_size, and, if extra is set, write the key
// (heap counter or timestamp) as an int64 into chunk.extra[heap_index].
#pragma once

#include <cstddef>
#include <cstdint>

namespace spead2::chunk
{

/// heap counter → chunk: position = (cnt - cnt_first) / cnt_step (heaps
/// whose counter is below cnt_first or off the step are rejected); chunk =
/// position / heaps_per_chunk, heap index = position % heaps_per_chunk.
struct counter_place_params
{
    std::int64_t heap_size;
    std::int64_t heaps_per_chunk;
    std::int64_t cnt_first;
    std::int64_t cnt_step;
    std::int64_t chunk_id_bias;   ///< added to every chunk ID
    bool extra;
};

/// timestamp × channel → chunk: t = (timestamp - first_timestamp) /
/// timestamp_step (floor), c = channel / channel_step (channels off the step
/// or >= channels are rejected); chunk = t / timestamps_per_chunk, heap index
/// = (t % timestamps_per_chunk) * channels + c.
struct timestamp_channel_place_params
{
    std::int64_t heap_size;
    std::int64_t channels;
    std::int64_t channel_step;
    std::int64_t timestamp_step;
    std::int64_t first_timestamp;
    std::int64_t timestamps_per_chunk;
    std::int64_t chunk_id_bias;
    bool extra;
};

/// The callbacks (context: a pointer to the matching parameters).
void place_by_counter(void *data, std::size_t data_size, void *params);
void place_by_timestamp_channel(void *data, std::size_t data_size, void *params);

} // namespace spead2::chunk
