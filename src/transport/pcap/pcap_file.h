// Reading link-layer frames from a capture file (pcap or pcapng).
//
// The file is mapped read-only and frames are returned as pointers into the
// mapping (no copies).  Supported:
//
// - classic pcap, either byte order, microsecond (magic a1b2c3d4) or
//   nanosecond (a1b23c4d) timestamps;
// - pcapng, either byte order per section, several sections, several
//   interfaces per section; Enhanced and Simple Packet Blocks carry frames,
//   every other block type is skipped;
// - link types 1 (Ethernet), 113 (Linux SLL), 276 (Linux SLL2) and
//   101 / 228 (raw IPv4).
//
// Errors:
// - missing / unreadable file: std::system_error (errno; message names the file);
// - empty file, not a capture file, truncated file header, unsupported link
//   type (classic pcap, or a pcapng whose leading interfaces are all
//   unsupported), bad BPF filter: std::runtime_error (RuntimeError in Python, as in the reference);
// - problems found while iterating (truncated last record, corrupt pcapng
//   block length, packets on an unsupported interface, snapped packets) are
//   logged once as warnings and never thrown: truncation and corruption end
//   the iteration, the others skip the frame.  (So does a BPF filter that
//   does not compile for the link type of a pcapng interface described only
//   after the first packet; earlier ones are checked by the constructor.)
//
// Timestamps are not interpreted: frames are returned in file order.  The
// file must not be shrunk by another process while it is open (the mapping
// would then raise SIGBUS, which no bounds check can prevent).
#pragma once

#include <atomic>
#include <cstddef>
#include <cstdint>
#include <memory>
#include <string>
#include <thread>
#include <vector>

#include "protocol/frame.h"

namespace spead2::transport
{

/// One captured frame, pointing into the file mapping.
struct pcap_frame
{
    const std::uint8_t *data = nullptr;
    std::size_t size = 0;                               ///< captured length
    protocol::link_type link = protocol::link_type::ethernet;
    bool snapped = false;   ///< cut short by the snapshot length (captured < original): not to be decoded
    std::int64_t time_ns = -1;   ///< the record's capture time, ns since the epoch (-1: none, e.g. pcapng SPB)
};

class pcap_file
{
public:
    /// Snapshot length given to libpcap when compiling a BPF filter.
    static constexpr int BPF_SNAPLEN = 262144;

    /**
     * Open and map @a filename and read its file header.  @a filter is a BPF
     * expression (tcpdump syntax) applied to every frame on top of the
     * caller's own decoding; empty for none.  Non-empty filters need spead2
     * built with libpcap.
     */
    explicit pcap_file(const std::string &filename, const std::string &filter = std::string());
    ~pcap_file();
    pcap_file(const pcap_file &) = delete;
    pcap_file &operator=(const pcap_file &) = delete;

    /// Fetch the next frame that is complete and passes the filter.  Returns
    /// false at the end of the file (or of its readable part).
    bool next(pcap_frame &out);

    /// Unmap the file; next() then returns false.  Idempotent.
    void close();

    /// One past the last byte of the mapping (for prefetching; null once closed).
    const std::uint8_t *end() const { return data ? data + size : nullptr; }

    const std::string &filename() const { return name; }
    bool is_pcapng() const { return pcapng; }

    // Counters (not synchronised: read them on the thread calling next()).
    std::uint64_t frames() const { return n_frames; }                   ///< frames returned by next()
    std::uint64_t snapped_frames() const { return n_snapped; }          ///< skipped: captured length < original length
    std::uint64_t filtered_frames() const { return n_filtered; }        ///< skipped: rejected by the BPF filter
    std::uint64_t unsupported_frames() const { return n_unsupported; }  ///< skipped: unknown / unsupported interface

private:
    struct compiled_filter;  // a BPF program for one link type (libpcap only)
    struct interface_info
    {
        bool supported = false;
        protocol::link_type link = protocol::link_type::ethernet;
        std::uint32_t link_number = 0;
        std::uint32_t snaplen = 0;                 ///< 0: unlimited
        std::uint8_t tsresol = 6;                  ///< pcapng if_tsresol: 10^-n s, or 2^-n s with the top bit
        const compiled_filter *filter = nullptr;   ///< null: no filter (or it failed, see filter_error)
        std::string filter_error;                  ///< non-empty: the filter did not compile for this link type
    };

    std::string name;
    std::string filter_text;
    const std::uint8_t *data = nullptr;  ///< the mapping
    std::size_t size = 0;                ///< its size
    std::size_t pos = 0;                 ///< offset of the next record / block
    // Page-table population ahead of the reader (see pcap_file.cpp).
    std::thread populator;
    std::atomic<std::size_t> read_pos{0};   ///< pos, published for the populator
    std::atomic<bool> populator_stop{false};
    bool populator_tried = false;
    bool pcapng = false;
    bool swapped = false;                ///< byte order of the file (current section) differs from ours
    bool done = false;
    std::vector<interface_info> interfaces;  ///< classic pcap: exactly one; pcapng: the current section's
    std::vector<std::unique_ptr<compiled_filter>> filters;  ///< one per link type seen

    std::uint64_t n_frames = 0, n_snapped = 0, n_filtered = 0, n_unsupported = 0;
    bool warned_snapped = false, warned_unsupported = false,
         warned_unknown_interface = false, warned_filter = false;

    std::uint16_t read16(std::size_t offset) const;
    std::uint32_t read32(std::size_t offset) const;
    const compiled_filter *get_filter(std::uint32_t link_number, std::string &error);
    interface_info make_interface(std::uint32_t link_number, std::uint32_t snaplen);
    void open_classic(bool swap);
    void open_pcapng();
    bool next_classic(pcap_frame &out);
    bool next_pcapng(pcap_frame &out, bool stop_before_packet);
    const char *check_block(std::uint32_t &type, std::size_t &length);
    bool accept(const interface_info &iface, const std::uint8_t *frame,
                std::size_t caplen, std::size_t orig_len, pcap_frame &out);
    bool classic_nanos = false;          ///< classic pcap with nanosecond timestamps
    /// pcapng IDB options: the timestamp resolution (if_tsresol), if given.
    std::uint8_t idb_tsresol(std::size_t body, std::size_t body_len) const;
    void unknown_interface(std::uint32_t iface);
    void start_populator();
    void populate_loop();
    void stop(const char *reason, std::size_t offset);
};

} // namespace spead2::transport
