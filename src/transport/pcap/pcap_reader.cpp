#include "transport/pcap/pcap_reader.h"

#include <memory>

#include "common/thread_pool.h"
#include "protocol/frame.h"
#include "protocol/spead.h"

namespace spead2::transport
{

pcap_reader::pcap_reader(packet_sink &sink, worker &thread, const std::string &filename,
                         const std::string &filter)
    : reader(sink, thread), file(filename, filter)
{
}

void pcap_reader::start()
{
    post_batch();
}

void pcap_reader::close()
{
    file.close();
}

namespace
{
// A record header (classic pcap 16 bytes; pcapng EPB 28 + trailer) sits
// between frames; close enough for prefetching.
constexpr std::size_t PCAP_RECORD_OVERHEAD = 16;
}

void pcap_reader::post_batch()
{
    // The task holds a reference so the reader outlives it while it is queued.
    std::shared_ptr<pcap_reader> self = std::static_pointer_cast<pcap_reader>(shared_from_this());
    thread.post([self] { self->run_batch(); });
}

void pcap_reader::run_batch()
{
    if (stopping.load())
        return;
    {
        batch b(sink);
        if (!b.active())
            return;
        protocol::packet_header headers[1];
        std::size_t n_headers = 0;
        bool at_eof = false;
        // A batch is BATCH_FRAMES frames of IPv4 UDP (as the reference, whose
        // capture filter removes other frames before its reader sees them);
        // frames cut short by the snapshot length count, and are skipped.
        for (std::size_t i = 0; i < BATCH_FRAMES;)
        {
            pcap_frame frame;
            if (!file.next(frame))
            {
                at_eof = true;
                break;
            }
            // Records follow each other in the mapping: fetch the next ones early.
            prefetch_ahead(frame.data + frame.size, frame.size + PCAP_RECORD_OVERHEAD, file.end());
            // A frame that decodes as IPv4 UDP always passes that filter, so
            // the filter is only evaluated for the others.
            protocol::udp_frame udp;
            if (frame.snapped
                || protocol::decode_frame(udp, frame.link, frame.data, frame.size) != protocol::frame_status::ok)
            {
                if (protocol::passes_udp_filter(frame.link, frame.data, frame.size))
                    i++;
                if (!frame.snapped)
                    non_udp_frames.fetch_add(1, std::memory_order_relaxed);
                continue;
            }
            i++;
            // Each packet goes to the core right away, while it is still in cache.
            if (protocol::decode_datagram(headers[0], udp.payload, udp.payload_size))
            {
                headers[0].time_ns = frame.time_ns;
                n_headers++;
                if (!b.add(headers, 1))
                    return;  // the stream has stopped
            }
            else
                b.malformed(1);
        }
        if (at_eof)
        {
            b.end_of_stream();  // reported when b is destroyed
            return;
        }
    }
    post_batch();  // after the batch is closed, so the worker can run other tasks first
}

} // namespace spead2::transport
