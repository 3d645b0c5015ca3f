// The parts of the ibverbs API that need no verbs headers: the configuration,
// its validation and the SPEAD2_IBV_INTERFACE override.  Compiled into every
// build, so the Python API is the same with or without the rdma-core headers.
#include "transport/ibv/ibv_reader.h"
#include "transport/ibv/ibv_sender.h"

#include <algorithm>
#include <cstdlib>
#include <stdexcept>

#include <arpa/inet.h>
#include <netinet/in.h>

#include "common/logging.h"
#include "common/socket_util.h"

namespace spead2::transport
{

const char *const IBV_NOT_BUILT_MESSAGE =
    "spead2 was built without ibverbs: install libibverbs-dev and reinstall spead2 "
    "(the build needs the rdma-core headers: apt install libibverbs-dev librdmacm-dev, "
    "then pip install --force-reinstall --no-binary spead2 spead2, or rebuild from source)";

bool ibv_compiled()
{
#ifdef SPEAD2_HAVE_IBV
    return true;
#else
    return false;
#endif
}

namespace
{

void check_max_poll(int v)
{
    if (v < 1)
        throw std::invalid_argument("max_poll must be at least 1");
}

void check_max_size(std::size_t v)
{
    if (v < 1)
        throw std::invalid_argument("max_size must be positive");
}

} // anonymous namespace

void ibv_config::set_buffer_size(std::size_t v)
{
    buffer_size = v ? v : IBV_DEFAULT_BUFFER_SIZE;
}

void ibv_config::set_max_size(std::size_t v)
{
    check_max_size(v);
    max_size = v;
}

void ibv_config::set_max_poll(int v)
{
    check_max_poll(v);
    max_poll = v;
}

void ibv_send_config::set_buffer_size(std::size_t v)
{
    buffer_size = v ? v : IBV_SEND_DEFAULT_BUFFER_SIZE;
}

void ibv_send_config::set_max_poll(int v)
{
    check_max_poll(v);
    max_poll = v;
}

void ibv_config::validate() const
{
    if (endpoints.empty())
        throw std::invalid_argument("endpoints is empty");
    if (interface_address.empty())
        throw std::invalid_argument("interface address must be specified");
    in_addr iface = resolve_ipv4(interface_address, "interface address");
    if (iface.s_addr == htonl(INADDR_ANY))
        throw std::invalid_argument("interface address must not be the unspecified address (0.0.0.0)");
    for (const auto &ep : endpoints)
        if (!ep.first.empty())
            resolve_ipv4(ep.first, "endpoint");   // throws "endpoint ... is not an IPv4 address"
    check_max_size(max_size);
    check_max_poll(max_poll);
}

void ibv_send_config::validate() const
{
    // The reference's checks, in its order and with its messages.
    if (endpoints.empty())
        throw std::invalid_argument("endpoints is empty");
    if (interface_address.empty())
        throw std::invalid_argument("interface address has not been specified");
    for (const auto &[host, port] : endpoints)
    {
        socklen_t length;
        sockaddr_storage sa = resolve_address(host, port, AF_UNSPEC, length);   // runtime_error if unresolvable
        if (sa.ss_family != AF_INET
            || !IN_MULTICAST(ntohl(reinterpret_cast<const sockaddr_in *>(&sa)->sin_addr.s_addr)))
            throw std::invalid_argument("endpoint is not an IPv4 multicast address");
    }
    {
        socklen_t length;
        sockaddr_storage sa = resolve_address(interface_address, 0, AF_UNSPEC, length);
        if (sa.ss_family != AF_INET)
            throw std::invalid_argument("interface address is not an IPv4 address");
    }
    check_max_poll(max_poll);
    for (const auto &region : memory_regions)
        if (region.second == 0)
            throw std::invalid_argument("memory region must have non-zero size");
    std::vector<std::pair<std::uintptr_t, std::size_t>> sorted;
    for (const auto &region : memory_regions)
        sorted.emplace_back(reinterpret_cast<std::uintptr_t>(region.first), region.second);
    std::sort(sorted.begin(), sorted.end());
    for (std::size_t i = 1; i < sorted.size(); i++)
        if (sorted[i].first - sorted[i - 1].first < sorted[i - 1].second)
            throw std::invalid_argument("memory regions overlap");
}

std::optional<ibv_config> ibv_override(const std::string &host, std::uint16_t port,
                                       std::size_t max_size, std::size_t buffer_size,
                                       const std::string &explicit_interface)
{
    const char *env = std::getenv("SPEAD2_IBV_INTERFACE");
    if (!env)
        return std::nullopt;
    ibv_config c;
    c.interface_address = explicit_interface.empty() || explicit_interface == "0.0.0.0" ? env : explicit_interface;
    try
    {
        resolve_ipv4(c.interface_address, "SPEAD2_IBV_INTERFACE");
    }
    catch (std::invalid_argument &e)
    {
        log_warning("ignoring SPEAD2_IBV_INTERFACE: %s", e.what());
        return std::nullopt;
    }
    c.endpoints.emplace_back(host, port);
    c.max_size = max_size;
    if (buffer_size)
        c.buffer_size = buffer_size;
    if (const char *vec = std::getenv("SPEAD2_IBV_COMP_VECTOR"))
    {
        char *end = nullptr;
        long v = std::strtol(vec, &end, 10);
        if (end && *end == '\0' && end != vec)
            c.comp_vector = int(v);
        else
            log_warning("ignoring SPEAD2_IBV_COMP_VECTOR=%s: not an integer", vec);
    }
    return c;
}

} // namespace spead2::transport
