#include "transport/pcap/pcap_file.h"

#include <algorithm>
#include <cerrno>
#include <chrono>
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <limits>
#include <stdexcept>
#include <system_error>

#include <fcntl.h>
#include <pthread.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#ifdef SPEAD2_HAVE_PCAP
#include <pcap/pcap.h>
#endif

#include "common/logging.h"

namespace spead2::transport
{

namespace
{

// Classic pcap layout.  File header: magic, version major/minor (2+2),
// thiszone, sigfigs, snaplen, link type (4 each).  Record header: seconds,
// sub-second timestamp, captured length, original length (4 each).
constexpr std::uint32_t PCAP_MAGIC_USEC = 0xa1b2c3d4;
constexpr std::uint32_t PCAP_MAGIC_NSEC = 0xa1b23c4d;
constexpr std::size_t MAGIC_SIZE = 4;
constexpr std::size_t PCAP_FILE_HEADER_SIZE = 24;
constexpr std::size_t PCAP_SNAPLEN_OFFSET = 16;
constexpr std::size_t PCAP_LINKTYPE_OFFSET = 20;
constexpr std::size_t PCAP_RECORD_HEADER_SIZE = 16;
constexpr std::size_t PCAP_RECORD_CAPLEN_OFFSET = 8;
constexpr std::size_t PCAP_RECORD_ORIGLEN_OFFSET = 12;
// The upper bits of the link-type field may carry FCS information.
constexpr std::uint32_t PCAP_LINKTYPE_MASK = 0xffff;

// pcapng layout.  Every block: type (4), total length (4), body, total
// length again (4); lengths are multiples of 4.
constexpr std::uint32_t PCAPNG_SHB_TYPE = 0x0a0d0d0a;  // a palindrome: same in either byte order
constexpr std::uint32_t PCAPNG_IDB_TYPE = 1;
constexpr std::uint32_t PCAPNG_SPB_TYPE = 3;
constexpr std::uint32_t PCAPNG_EPB_TYPE = 6;
constexpr std::uint32_t PCAPNG_BYTE_ORDER_MAGIC = 0x1a2b3c4d;
constexpr std::uint16_t PCAPNG_MAJOR_VERSION = 1;
constexpr std::size_t PCAPNG_BLOCK_HEADER_SIZE = 8;    // type + total length
constexpr std::size_t PCAPNG_BLOCK_OVERHEAD = 12;      // header + trailing length
constexpr std::size_t PCAPNG_BLOCK_ALIGN = 4;
// SHB body: byte-order magic (4), major (2), minor (2), section length (8), options
constexpr std::size_t PCAPNG_SHB_MIN_SIZE = PCAPNG_BLOCK_OVERHEAD + 16;
constexpr std::size_t PCAPNG_SHB_MAJOR_OFFSET = 4;     // within the body
// IDB body: link type (2), reserved (2), snaplen (4), options
constexpr std::size_t PCAPNG_IDB_MIN_BODY = 8;
constexpr std::size_t PCAPNG_IDB_SNAPLEN_OFFSET = 4;
// EPB body: interface id, timestamp high, timestamp low, captured length,
// original length (4 each), packet data (padded), options
constexpr std::size_t PCAPNG_EPB_MIN_BODY = 20;
constexpr std::size_t PCAPNG_EPB_CAPLEN_OFFSET = 12;
constexpr std::size_t PCAPNG_EPB_ORIGLEN_OFFSET = 16;
// SPB body: original length (4), packet data (padded); always interface 0
constexpr std::size_t PCAPNG_SPB_MIN_BODY = 4;

// Link-layer type numbers (LINKTYPE_* in the tcpdump.org registry)
constexpr std::uint32_t LINKTYPE_ETHERNET = 1;
constexpr std::uint32_t LINKTYPE_RAW = 101;
constexpr std::uint32_t LINKTYPE_LINUX_SLL = 113;
constexpr std::uint32_t LINKTYPE_IPV4 = 228;
constexpr std::uint32_t LINKTYPE_LINUX_SLL2 = 276;
constexpr const char *SUPPORTED_LINK_TYPES =
    "1 (Ethernet), 113 (Linux SLL), 276 (Linux SLL2), 101 and 228 (raw IPv4)";

bool map_link_type(std::uint32_t number, protocol::link_type &out)
{
    switch (number)
    {
    case LINKTYPE_ETHERNET: out = protocol::link_type::ethernet; return true;
    case LINKTYPE_LINUX_SLL: out = protocol::link_type::linux_sll; return true;
    case LINKTYPE_LINUX_SLL2: out = protocol::link_type::linux_sll2; return true;
    case LINKTYPE_RAW:
    case LINKTYPE_IPV4: out = protocol::link_type::raw_ipv4; return true;
    default: return false;
    }
}

std::string unsupported_link_message(const std::string &name, std::uint32_t number)
{
    return "capture file " + name + " has link type " + std::to_string(number)
        + ", which is not supported (supported link types: " + SUPPORTED_LINK_TYPES + ")";
}

std::uint32_t load_native32(const std::uint8_t *p)
{
    std::uint32_t v;
    std::memcpy(&v, p, sizeof(v));
    return v;
}

} // anonymous namespace

struct pcap_file::compiled_filter
{
    std::uint32_t link_number = 0;
    std::string error;   ///< empty if the program compiled
#ifdef SPEAD2_HAVE_PCAP
    bpf_program program{};
    ~compiled_filter() { pcap_freecode(&program); }  // harmless on a zeroed program
#endif
};

pcap_file::pcap_file(const std::string &filename, const std::string &filter)
    : name(filename), filter_text(filter)
{
#ifndef SPEAD2_HAVE_PCAP
    if (!filter.empty())
        throw std::runtime_error("BPF filters need spead2 built with libpcap (cannot apply filter '"
                                    + filter + "' to " + filename + ")");
#endif
    int fd = ::open(filename.c_str(), O_RDONLY | O_CLOEXEC);
    if (fd < 0)
        throw std::system_error(errno, std::generic_category(), "cannot open capture file " + filename);
    struct stat st;
    if (::fstat(fd, &st) != 0)
    {
        int err = errno;
        ::close(fd);
        throw std::system_error(err, std::generic_category(), "cannot stat capture file " + filename);
    }
    if (S_ISDIR(st.st_mode))
    {
        ::close(fd);
        throw std::system_error(EISDIR, std::generic_category(), "cannot read capture file " + filename);
    }
    if (!S_ISREG(st.st_mode))
    {
        ::close(fd);
        throw std::runtime_error("capture file " + filename + " is not a regular file");
    }
    if (st.st_size <= 0)
    {
        ::close(fd);
        throw std::runtime_error("capture file " + filename + " is empty");
    }
    if (std::uintmax_t(st.st_size) > std::numeric_limits<std::size_t>::max())
    {
        ::close(fd);
        throw std::runtime_error("capture file " + filename + " is too large to map");
    }
    const std::size_t file_size = std::size_t(st.st_size);
    void *mapping = ::mmap(nullptr, file_size, PROT_READ, MAP_PRIVATE, fd, 0);
    int map_errno = errno;
    ::close(fd);  // the mapping keeps the file open
    if (mapping == MAP_FAILED)
        throw std::system_error(map_errno, std::generic_category(), "cannot map capture file " + filename);
    data = static_cast<const std::uint8_t *>(mapping);
    size = file_size;
    ::madvise(mapping, file_size, MADV_SEQUENTIAL);  // only a hint; failure is harmless

    try
    {
        if (size < MAGIC_SIZE)
            throw std::runtime_error("capture file " + name + " is too short (" + std::to_string(size)
                                        + " bytes) to be a pcap or pcapng file");
        const std::uint32_t magic = load_native32(data);
        classic_nanos = magic == PCAP_MAGIC_NSEC || __builtin_bswap32(magic) == PCAP_MAGIC_NSEC;
        if (magic == PCAP_MAGIC_USEC || magic == PCAP_MAGIC_NSEC)
            open_classic(false);
        else if (__builtin_bswap32(magic) == PCAP_MAGIC_USEC || __builtin_bswap32(magic) == PCAP_MAGIC_NSEC)
            open_classic(true);
        else if (magic == PCAPNG_SHB_TYPE)
            open_pcapng();
        else
        {
            char hex[16];
            std::snprintf(hex, sizeof(hex), "%02x%02x%02x%02x", data[0], data[1], data[2], data[3]);
            throw std::runtime_error("capture file " + name
                                        + " is not a pcap or pcapng file (unknown magic number " + hex + ")");
        }
    }
    catch (...)
    {
        close();
        throw;
    }
}

pcap_file::~pcap_file()
{
    close();
}

void pcap_file::close()
{
    // The populator touches the mapping: it must be gone before the unmap.
    populator_stop.store(true);
    if (populator.joinable())
        populator.join();
    if (data)
        ::munmap(const_cast<std::uint8_t *>(data), size);
    data = nullptr;
    size = 0;
    pos = 0;
    done = true;
}

std::uint16_t pcap_file::read16(std::size_t offset) const
{
    std::uint16_t v;
    std::memcpy(&v, data + offset, sizeof(v));
    return swapped ? __builtin_bswap16(v) : v;
}

std::uint32_t pcap_file::read32(std::size_t offset) const
{
    std::uint32_t v;
    std::memcpy(&v, data + offset, sizeof(v));
    return swapped ? __builtin_bswap32(v) : v;
}

const pcap_file::compiled_filter *pcap_file::get_filter(std::uint32_t link_number, std::string &error)
{
    for (const auto &f : filters)
        if (f->link_number == link_number)
        {
            error = f->error;
            return f->error.empty() ? f.get() : nullptr;
        }
    auto f = std::make_unique<compiled_filter>();
    f->link_number = link_number;
#ifdef SPEAD2_HAVE_PCAP
    // pcap_open_dead wants a DLT_ value; they equal the LINKTYPE_ values
    // except for raw IP, whose DLT_ value differs between platforms.
    const int dlt = link_number == LINKTYPE_RAW ? DLT_RAW : int(link_number);
    pcap_t *handle = pcap_open_dead(dlt, BPF_SNAPLEN);
    if (!handle)
        f->error = "pcap_open_dead failed";
    else
    {
        if (pcap_compile(handle, &f->program, filter_text.c_str(), 1, PCAP_NETMASK_UNKNOWN) != 0)
            f->error = pcap_geterr(handle);
        pcap_close(handle);
    }
#else
    f->error = "BPF filters need spead2 built with libpcap";
#endif
    error = f->error;
    filters.push_back(std::move(f));
    return error.empty() ? filters.back().get() : nullptr;
}

pcap_file::interface_info pcap_file::make_interface(std::uint32_t link_number, std::uint32_t snaplen)
{
    interface_info info;
    info.link_number = link_number;
    info.snaplen = snaplen;
    info.supported = map_link_type(link_number, info.link);
    if (info.supported && !filter_text.empty())
        info.filter = get_filter(link_number, info.filter_error);
    return info;
}

void pcap_file::open_classic(bool swap)
{
    swapped = swap;
    if (size < PCAP_FILE_HEADER_SIZE)
        throw std::runtime_error("capture file " + name + " is truncated inside the pcap file header ("
                                    + std::to_string(size) + " bytes)");
    const std::uint32_t link_number = read32(PCAP_LINKTYPE_OFFSET) & PCAP_LINKTYPE_MASK;
    interfaces.push_back(make_interface(link_number, read32(PCAP_SNAPLEN_OFFSET)));
    const interface_info &iface = interfaces.back();
    if (!iface.supported)
        throw std::runtime_error(unsupported_link_message(name, link_number));
    if (!iface.filter_error.empty())
        throw std::runtime_error("invalid BPF filter '" + filter_text + "' for " + name + ": "
                                    + iface.filter_error);
    pos = PCAP_FILE_HEADER_SIZE;
}

void pcap_file::open_pcapng()
{
    pcapng = true;
    std::uint32_t type;
    std::size_t length;
    if (size < PCAPNG_SHB_MIN_SIZE)
        throw std::runtime_error("capture file " + name + " is truncated inside the pcapng section header ("
                                    + std::to_string(size) + " bytes)");
    if (const char *reason = check_block(type, length))
        throw std::runtime_error("capture file " + name + " has an invalid pcapng section header: " + reason);
    const std::uint16_t major = read16(pos + PCAPNG_BLOCK_HEADER_SIZE + PCAPNG_SHB_MAJOR_OFFSET);
    if (major != PCAPNG_MAJOR_VERSION)
        throw std::runtime_error("capture file " + name + " has unsupported pcapng version "
                                    + std::to_string(major));

    // Read the blocks before the first packet, so that the interfaces are
    // known and problems with them are reported to the caller.
    pcap_frame unused;
    next_pcapng(unused, true);
    for (const auto &iface : interfaces)
        if (!iface.filter_error.empty())
            throw std::runtime_error("invalid BPF filter '" + filter_text + "' for " + name + ": "
                                        + iface.filter_error);
    if (!interfaces.empty())
    {
        bool any_supported = false;
        for (const auto &iface : interfaces)
            any_supported |= iface.supported;
        if (!any_supported)
            throw std::runtime_error(unsupported_link_message(name, interfaces.front().link_number));
    }
}

// Page-table population ahead of the reader.  Faulting a file mapping in page
// by page is slow (a freshly written 544 MB capture took 42 ms of page faults
// on the reading thread) and software prefetches into pages not mapped yet
// are dropped.  A helper thread keeps the page tables filled up to
// POPULATE_AHEAD bytes beyond the read position with MADV_POPULATE_READ
// (Linux 5.14; on older kernels it stops at once and page faults do the work).
// It only maps what the reader is about to read anyway.
namespace
{
constexpr std::size_t POPULATE_AHEAD = std::size_t(32) << 20;
constexpr std::size_t POPULATE_STEP = std::size_t(4) << 20;
constexpr auto POPULATE_IDLE = std::chrono::microseconds(500);
#ifndef MADV_POPULATE_READ
constexpr int MADV_POPULATE_READ = 22;
#endif
}

void pcap_file::start_populator()
{
    populator_tried = true;
    try
    {
        populator = std::thread([this] { populate_loop(); });
    }
    catch (std::system_error &e)
    {
        log_debug("capture file %s: no page-table populator thread (%s)", name.c_str(), e.what());
    }
}

void pcap_file::populate_loop()
{
    ::pthread_setname_np(::pthread_self(), "spead2-populate");
    const std::size_t page = std::size_t(::sysconf(_SC_PAGESIZE));
    std::size_t populated = 0;
    while (populated < size && !populator_stop.load(std::memory_order_relaxed))
    {
        const std::size_t target = std::min(size, read_pos.load(std::memory_order_relaxed) + POPULATE_AHEAD);
        if (populated >= target)
        {
            std::this_thread::sleep_for(POPULATE_IDLE);
            continue;
        }
        const std::size_t start = populated / page * page;
        const std::size_t stop = std::min(target, start + POPULATE_STEP);
        if (::madvise(const_cast<std::uint8_t *>(data) + start, stop - start, MADV_POPULATE_READ) != 0)
        {
            // EINVAL: kernel too old.  Anything else (EFAULT if the file
            // shrank, ENOMEM, EINTR): leave the rest to page faults.
            log_debug("capture file %s: MADV_POPULATE_READ failed (%s); relying on page faults",
                      name.c_str(), std::strerror(errno));
            return;
        }
        populated = stop;
    }
}

bool pcap_file::next(pcap_frame &out)
{
    if (done || !data)
        return false;
    read_pos.store(pos, std::memory_order_relaxed);
    if (!populator_tried)
        start_populator();
    return pcapng ? next_pcapng(out, false) : next_classic(out);
}

void pcap_file::stop(const char *reason, std::size_t offset)
{
    done = true;
    log_warning("capture file %s: %s (at offset %zu); ignoring the rest of the file",
                name.c_str(), reason, offset);
}

bool pcap_file::accept(const interface_info &iface, const std::uint8_t *frame,
                       std::size_t caplen, std::size_t orig_len, pcap_frame &out)
{
    if (!iface.supported)
    {
        n_unsupported++;
        if (!warned_unsupported)
        {
            warned_unsupported = true;
            log_warning("capture file %s: skipping packets on an interface with link type %u, which is not "
                        "supported (supported link types: %s)",
                        name.c_str(), unsigned(iface.link_number), SUPPORTED_LINK_TYPES);
        }
        return false;
    }
    if (!iface.filter_error.empty())
    {
        // Only possible for interfaces that appear after the first packet.
        n_filtered++;
        if (!warned_filter)
        {
            warned_filter = true;
            log_warning("capture file %s: skipping packets on an interface with link type %u: "
                        "the BPF filter does not compile for it: %s",
                        name.c_str(), unsigned(iface.link_number), iface.filter_error.c_str());
        }
        return false;
    }
#ifdef SPEAD2_HAVE_PCAP
    if (iface.filter)
    {
        struct pcap_pkthdr header{};
        header.caplen = bpf_u_int32(caplen);
        header.len = bpf_u_int32(orig_len);
        if (pcap_offline_filter(&iface.filter->program, &header, frame) == 0)
        {
            n_filtered++;
            return false;
        }
    }
#endif
    out.data = frame;
    out.size = caplen;
    out.link = iface.link;
    out.snapped = caplen < orig_len;
    if (out.snapped)
    {
        // Returned all the same (the reader counts it in its batch, as the
        // reference does), but never decoded.
        n_snapped++;
        if (!warned_snapped)
        {
            warned_snapped = true;
            log_warning("capture file %s: skipping packets that were cut short by the capture's snapshot length "
                        "(first one: %zu of %zu bytes captured)",
                        name.c_str(), caplen, orig_len);
        }
        return true;
    }
    n_frames++;
    return true;
}

bool pcap_file::next_classic(pcap_frame &out)
{
    // Invariant: pos <= size, so size - pos never wraps.
    while (!done)
    {
        const std::size_t remaining = size - pos;
        if (remaining == 0)
        {
            done = true;
            return false;
        }
        if (remaining < PCAP_RECORD_HEADER_SIZE)
        {
            stop("file is truncated inside a record header", pos);
            return false;
        }
        const std::uint32_t caplen = read32(pos + PCAP_RECORD_CAPLEN_OFFSET);
        const std::uint32_t orig_len = read32(pos + PCAP_RECORD_ORIGLEN_OFFSET);
        if (caplen > remaining - PCAP_RECORD_HEADER_SIZE)
        {
            stop("file is truncated inside a record's data", pos);
            return false;
        }
        const std::uint8_t *frame = data + pos + PCAP_RECORD_HEADER_SIZE;
        const std::int64_t seconds = read32(pos);
        const std::int64_t fraction = read32(pos + 4);
        pos += PCAP_RECORD_HEADER_SIZE + caplen;
        if (accept(interfaces.front(), frame, caplen, orig_len, out))
        {
            out.time_ns = seconds * 1000000000 + (classic_nanos ? fraction : fraction * 1000);
            return true;
        }
    }
    return false;
}

const char *pcap_file::check_block(std::uint32_t &type, std::size_t &length)
{
    // Invariant: pos <= size, so size - pos never wraps.
    const std::size_t remaining = size - pos;
    if (remaining < PCAPNG_BLOCK_HEADER_SIZE)
        return "file is truncated inside a block header";
    const std::uint32_t raw_type = load_native32(data + pos);
    if (raw_type == PCAPNG_SHB_TYPE)
    {
        // A new section, possibly in the other byte order.
        if (remaining < PCAPNG_BLOCK_HEADER_SIZE + 4)
            return "file is truncated inside a section header block";
        const std::uint32_t bom = load_native32(data + pos + PCAPNG_BLOCK_HEADER_SIZE);
        if (bom == PCAPNG_BYTE_ORDER_MAGIC)
            swapped = false;
        else if (__builtin_bswap32(bom) == PCAPNG_BYTE_ORDER_MAGIC)
            swapped = true;
        else
            return "section header block has an invalid byte-order magic";
        type = PCAPNG_SHB_TYPE;
    }
    else
        type = swapped ? __builtin_bswap32(raw_type) : raw_type;
    const std::uint32_t total = read32(pos + 4);
    if (total < PCAPNG_BLOCK_OVERHEAD)
        return "corrupt block length (smaller than 12)";
    if (total % PCAPNG_BLOCK_ALIGN != 0)
        return "corrupt block length (not a multiple of 4)";
    if (total > remaining)
        return "file is truncated (a block runs past the end of the file)";
    if (type == PCAPNG_SHB_TYPE && total < PCAPNG_SHB_MIN_SIZE)
        return "corrupt block length (section header block too short)";
    if (read32(pos + total - 4) != total)
        return "corrupt block (trailing block length does not match)";
    length = total;
    return nullptr;
}

bool pcap_file::next_pcapng(pcap_frame &out, bool stop_before_packet)
{
    while (!done)
    {
        if (pos == size)
        {
            done = true;
            return false;
        }
        std::uint32_t type;
        std::size_t length;
        if (const char *reason = check_block(type, length))
        {
            stop(reason, pos);
            return false;
        }
        if (stop_before_packet && (type == PCAPNG_EPB_TYPE || type == PCAPNG_SPB_TYPE))
            return false;
        // check_block guarantees pos + length <= size and length >= overhead.
        const std::size_t block = pos;
        const std::size_t body = pos + PCAPNG_BLOCK_HEADER_SIZE;
        const std::size_t body_len = length - PCAPNG_BLOCK_OVERHEAD;
        pos += length;
        switch (type)
        {
        case PCAPNG_SHB_TYPE:
            if (read16(body + PCAPNG_SHB_MAJOR_OFFSET) != PCAPNG_MAJOR_VERSION)
            {
                stop("section with an unsupported pcapng version", block);
                return false;
            }
            interfaces.clear();  // interface ids are per section
            break;
        case PCAPNG_IDB_TYPE:
            if (body_len < PCAPNG_IDB_MIN_BODY)
            {
                stop("corrupt interface description block (too short)", block);
                return false;
            }
            interfaces.push_back(make_interface(read16(body), read32(body + PCAPNG_IDB_SNAPLEN_OFFSET)));
            interfaces.back().tsresol = idb_tsresol(body, body_len);
            break;
        case PCAPNG_EPB_TYPE:
        {
            if (body_len < PCAPNG_EPB_MIN_BODY)
            {
                stop("corrupt enhanced packet block (too short)", block);
                return false;
            }
            const std::uint32_t iface = read32(body);
            const std::uint32_t caplen = read32(body + PCAPNG_EPB_CAPLEN_OFFSET);
            const std::uint32_t orig_len = read32(body + PCAPNG_EPB_ORIGLEN_OFFSET);
            if (caplen > body_len - PCAPNG_EPB_MIN_BODY)
            {
                stop("corrupt enhanced packet block (captured length exceeds the block)", block);
                return false;
            }
            if (iface >= interfaces.size())
            {
                unknown_interface(iface);
                break;
            }
            if (accept(interfaces[iface], data + body + PCAPNG_EPB_MIN_BODY, caplen, orig_len, out))
            {
                const std::uint64_t ts = (std::uint64_t(read32(body + 4)) << 32) | read32(body + 8);
                const std::uint8_t res = interfaces[iface].tsresol;
                long double ns;
                if (res & 0x80)
                    ns = (long double) ts * 1e9L / (long double) (std::uint64_t(1) << (res & 0x3f));
                else
                {
                    ns = (long double) ts;
                    for (int i = res; i < 9; i++)
                        ns *= 10;
                    for (int i = 9; i < res; i++)
                        ns /= 10;
                }
                out.time_ns = std::int64_t(ns);
                return true;
            }
            break;
        }
        case PCAPNG_SPB_TYPE:
        {
            if (body_len < PCAPNG_SPB_MIN_BODY)
            {
                stop("corrupt simple packet block (too short)", block);
                return false;
            }
            if (interfaces.empty())
            {
                unknown_interface(0);
                break;
            }
            const interface_info &iface = interfaces.front();
            const std::uint32_t orig_len = read32(body);
            // The block holds the packet cut to the interface's snapshot length.
            std::uint32_t caplen = orig_len;
            if (iface.snaplen != 0 && iface.snaplen < caplen)
                caplen = iface.snaplen;
            if (caplen > body_len - PCAPNG_SPB_MIN_BODY)
            {
                stop("corrupt simple packet block (packet exceeds the block)", block);
                return false;
            }
            if (accept(iface, data + body + PCAPNG_SPB_MIN_BODY, caplen, orig_len, out))
                return true;
            break;
        }
        default:
            break;  // statistics, name resolution, custom blocks...: nothing for us
        }
    }
    return false;
}

std::uint8_t pcap_file::idb_tsresol(std::size_t body, std::size_t body_len) const
{
    // Options follow the 8 fixed bytes: code (2), length (2), value padded to 4.
    std::size_t opt = PCAPNG_IDB_MIN_BODY;
    while (opt + 4 <= body_len)
    {
        const std::uint16_t code = read16(body + opt);
        const std::uint16_t len = read16(body + opt + 2);
        if (code == 0)
            break;   // opt_endofopt
        if (opt + 4 + len > body_len)
            break;
        if (code == 9 && len >= 1)   // if_tsresol
            return data[body + opt + 4];
        opt += 4 + ((len + 3u) & ~3u);
    }
    return 6;   // microseconds
}

void pcap_file::unknown_interface(std::uint32_t iface)
{
    n_unsupported++;
    if (!warned_unknown_interface)
    {
        warned_unknown_interface = true;
        log_warning("capture file %s: skipping packets on interface %u, which has no interface description block",
                    name.c_str(), unsigned(iface));
    }
}

} // namespace spead2::transport
