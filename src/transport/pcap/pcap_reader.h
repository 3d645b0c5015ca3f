// Replay of a capture file (pcap / pcapng) into a stream.
//
// The file is opened in the constructor, so that a missing file, a bad
// format or an invalid BPF filter is reported (as an exception, see
// pcap_file.h) to whoever adds the reader.  Once started, the reader posts
// itself to its worker repeatedly, decoding up to BATCH_FRAMES frames per
// run (one batch), so the worker yields between batches and a stop request
// takes effect at the next batch.  At the end of the file the stream gets an
// end-of-stream, like a network stop.
//
// Frames that are not unfragmented IPv4 UDP are other traffic: they are
// skipped silently and only counted (non_udp_frames).  UDP payloads that are
// not a valid SPEAD packet are reported to the stream as malformed.
#pragma once

#include <atomic>
#include <cstddef>
#include <cstdint>
#include <string>

#include "transport/pcap/pcap_file.h"
#include "transport/reader.h"

namespace spead2::transport
{

class pcap_reader : public reader
{
public:
    /// Frames decoded per task run (and per batch handed to the sink).
    static constexpr std::size_t BATCH_FRAMES = 64;

    /**
     * Open @a filename (pcap or pcapng).  @a filter is a BPF expression in
     * tcpdump syntax, empty for none (non-empty needs spead2 built with
     * libpcap).  Throws std::system_error or std::runtime_error.
     */
    pcap_reader(packet_sink &sink, worker &thread, const std::string &filename, const std::string &filter);

    void start() override;
    /// Unmap the file (after request_stop, once no task can be running).
    void close() override;

    /// Frames skipped because they do not hold unfragmented IPv4 UDP.
    std::atomic<std::uint64_t> non_udp_frames{0};

private:
    pcap_file file;

    void post_batch();
    void run_batch();
};

} // namespace spead2::transport
