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
        protocol::packet_header headers[BATCH_FRAMES];
        std::size_t n_headers = 0;
        bool at_eof = false;
        for (std::size_t i = 0; i < BATCH_FRAMES; i++)
        {
            pcap_frame frame;
            if (!file.next(frame))
            {
                at_eof = true;
                break;
            }
            protocol::udp_frame udp;
            if (protocol::decode_frame(udp, frame.link, frame.data, frame.size) != protocol::frame_status::ok)
            {
                non_udp_frames.fetch_add(1, std::memory_order_relaxed);
                continue;
            }
            if (protocol::decode_datagram(headers[n_headers], udp.payload, udp.payload_size))
                n_headers++;
            else
                b.malformed(1);
        }
        if (n_headers > 0 && !b.add(headers, n_headers))
            return;  // the stream has stopped
        if (at_eof)
        {
            b.end_of_stream();  // reported when b is destroyed
            return;
        }
    }
    post_batch();  // after the batch is closed, so the worker can run other tasks first
}

} // namespace spead2::transport
