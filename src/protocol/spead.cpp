#include "protocol/spead.h"

#include <algorithm>
#include "common/log_limiter.h"
#include "common/logging.h"

namespace spead2::protocol
{

const char *describe(decode_status status)
{
    switch (status)
    {
    case decode_status::ok: return "ok";
    case decode_status::too_small: return "packet is too small for a SPEAD header";
    case decode_status::bad_magic: return "packet has the wrong magic or version";
    case decode_status::bad_widths: return "packet has invalid item-pointer field widths";
    case decode_status::items_overflow: return "item pointers overflow the packet";
    case decode_status::missing_specials:
        return "packet lacks an immediate HEAP_CNT, PAYLOAD_OFFSET or PAYLOAD_LENGTH";
    case decode_status::payload_overflow: return "payload overflows the packet";
    case decode_status::length_mismatch: return "payload extends past the heap length";
    }
    return "unknown";
}

decode_status decode_packet(packet_header &out, const std::uint8_t *data, std::size_t max_size)
{
    if (max_size < HEADER_SIZE)
        return decode_status::too_small;
    const std::uint64_t header = load_be64(data);
    if ((header >> 48) != MAGIC_VERSION)
        return decode_status::bad_magic;
    const int item_id_bits = int((header >> 40) & 0xff) * 8;
    const int heap_address_bits = int((header >> 32) & 0xff) * 8;
    if (item_id_bits == 0 || heap_address_bits == 0 || item_id_bits + heap_address_bits != 64)
        return decode_status::bad_widths;
    const int n_items = int(header & 0xffff);
    if (std::size_t(n_items) * ITEM_POINTER_SIZE + HEADER_SIZE > max_size)
        return decode_status::items_overflow;

    // Item ID of an immediate pointer: the top bit (mode) is 1, then the ID.
    const std::uint64_t value_mask = (std::uint64_t(1) << heap_address_bits) - 1;
    const int id_shift = heap_address_bits;
    std::int64_t heap_cnt = -1, heap_length = -1, payload_offset = -1, payload_length = -1;
    int first_regular = -1;
    // Also gathered in this one pass, so that the stream need not walk the
    // pointers again: the highest item address, and whether the packet stops
    // the stream.
    std::uint64_t max_address = 0;
    bool stop = false;
    const std::uint8_t *ptrs = data + HEADER_SIZE;
    for (int i = 0; i < n_items; i++)
    {
        const std::uint64_t raw = load_be64(ptrs + i * ITEM_POINTER_SIZE);
        // Immediate with ID 1..4: the mode bit plus ID occupy the bits above id_shift.
        const std::uint64_t mode_id = raw >> id_shift;
        const std::uint64_t imm_flag = std::uint64_t(1) << (63 - id_shift);
        const std::int64_t value = std::int64_t(raw & value_mask);
        bool special = true;
        if (mode_id == (imm_flag | HEAP_CNT_ID))
            heap_cnt = value;
        else if (mode_id == (imm_flag | HEAP_LENGTH_ID))
            heap_length = value;
        else if (mode_id == (imm_flag | PAYLOAD_OFFSET_ID))
            payload_offset = value;
        else if (mode_id == (imm_flag | PAYLOAD_LENGTH_ID))
            payload_length = value;
        else
        {
            special = false;
            if (!(raw >> 63))
                max_address = std::max(max_address, std::uint64_t(value));
            else if (mode_id == (imm_flag | STREAM_CTRL_ID) && std::uint64_t(value) == CTRL_STREAM_STOP)
                stop = true;
        }
        if (!special && first_regular < 0)
            first_regular = i;
    }
    if (heap_cnt < 0 || payload_offset < 0 || payload_length < 0)
        return decode_status::missing_specials;
    const std::size_t size = HEADER_SIZE + std::size_t(n_items) * ITEM_POINTER_SIZE
                             + std::size_t(payload_length);
    // payload_length < 2^56, so the sum cannot overflow size_t.
    if (size > max_size)
        return decode_status::payload_overflow;
    if (heap_length >= 0 && payload_offset + payload_length > heap_length)
        return decode_status::length_mismatch;
    if (first_regular < 0)
        first_regular = n_items;
    out.heap_address_bits = heap_address_bits;
    out.all_items = n_items;
    out.n_items = n_items - first_regular;
    out.heap_cnt = heap_cnt;
    out.heap_length = heap_length;
    out.payload_offset = payload_offset;
    out.payload_length = payload_length;
    out.pointers = ptrs + first_regular * ITEM_POINTER_SIZE;
    out.payload = ptrs + n_items * ITEM_POINTER_SIZE;
    out.packet = data;
    out.size = size;
    out.max_address = max_address;
    out.stop = stop;
    return decode_status::ok;
}

namespace
{
log_limiter &decode_log()
{
    // Leaked on purpose, like the log state: readers may decode until exit.
    static log_limiter *l = new log_limiter("datagrams dropped", {
        {"empty", log_level::info}, {"not a valid SPEAD packet", log_level::info},
        {"with a size mismatch", log_level::info}});
    return *l;
}
} // anonymous namespace

void summarise_decode_log(bool force)
{
    decode_log().summarise(force);
}

bool decode_datagram(packet_header &out, const std::uint8_t *data, std::size_t size)
{
    if (size == 0)
    {
        if (decode_log().note(0))
            log_info("dropped packet due to truncation (empty datagram)");
        return false;
    }
    decode_status status = decode_packet(out, data, size);
    if (status != decode_status::ok)
    {
        if (decode_log().note(1))
            log_info("dropped packet: %s", describe(status));
        return false;
    }
    if (out.size != size)
    {
        if (decode_log().note(2))
            log_info("dropped packet due to size mismatch (%zu bytes in datagram, %zu in packet)",
                     size, out.size);
        return false;
    }
    return true;
}

} // namespace spead2::protocol
