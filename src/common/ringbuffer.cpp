#include "common/ringbuffer.h"

#include <cerrno>
#include <cstdint>
#include <system_error>
#include <sys/eventfd.h>
#include <unistd.h>

namespace spead2
{

int level_fd::get(bool readable_now)
{
    if (fd < 0)
    {
        fd = eventfd(readable_now ? 1 : 0, EFD_CLOEXEC | EFD_NONBLOCK);
        if (fd < 0)
            throw std::system_error(errno, std::generic_category(), "eventfd");
        set = readable_now;
    }
    return fd;
}

level_fd::~level_fd()
{
    if (fd >= 0)
        close(fd);
}

void level_fd::update(bool readable)
{
    if (fd < 0 || readable == set)
        return;
    if (readable)
    {
        std::uint64_t one = 1;
        [[maybe_unused]] ssize_t r = write(fd, &one, sizeof(one));
    }
    else
    {
        std::uint64_t value;
        [[maybe_unused]] ssize_t r = read(fd, &value, sizeof(value));
    }
    set = readable;
}

} // namespace spead2
