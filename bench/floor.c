/* Floors for chunk placement on this machine: how fast the simplest possible
 * receiver could go, to read bench_chunk.py's "fraction of the copy limit"
 * against.  Built and run by bench_floor.py; see there and
 * doc/benchmarking.rst.
 *
 *   floor copy     SPEAD_FILE CHUNK_BYTES N_CHUNKS
 *       The copy limit in C: memcpy the payload bytes (file size minus
 *       headers) from the file's contents in memory into a ring of chunks,
 *       one whole chunk per call (what copylimit.py does with numpy).
 *   floor place    SPEAD_FILE CHUNK_BYTES N_CHUNKS HEAP_SIZE
 *       A bare receiver: walk the packets in order, read the header and the
 *       item pointers (HEAP_CNT, PAYLOAD_OFFSET, PAYLOAD_LENGTH), copy each
 *       payload to its heap's place in the chunk ring.  No checks, no
 *       statistics, no callback: nothing a real receiver could leave out
 *       less.
 *   floor map      FILE
 *       The kernel's part of replaying FILE from the page cache through a
 *       mapping: map it and fill its page tables (MADV_POPULATE_READ), which
 *       is what the pcap reader's helper thread does; and, for comparison,
 *       read() of the whole file in 4 MiB blocks.
 *
 * Prints one line per measurement: "<what> <seconds> <packets or bytes>".
 */
#define _GNU_SOURCE
#include <fcntl.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#ifndef MADV_POPULATE_READ
#define MADV_POPULATE_READ 22
#endif

static uint64_t be64(const uint8_t *p)
{
    uint64_t v;
    memcpy(&v, p, 8);
    return __builtin_bswap64(v);
}

/* The packet at p: its HEAP_CNT, PAYLOAD_OFFSET and PAYLOAD_LENGTH items
 * (0 if absent); returns the packet's size. */
static inline size_t parse_packet(const uint8_t *p, uint64_t *cnt, uint64_t *offset, uint64_t *length)
{
    const uint64_t header = be64(p);
    const unsigned n_items = (unsigned) (header & 0xffff);
    const unsigned hab = (unsigned) ((header >> 32) & 0xff) * 8;
    const uint64_t mask = (UINT64_C(1) << hab) - 1;
    const uint64_t imm = UINT64_C(1) << (63 - hab);
    *cnt = *offset = *length = 0;
    for (unsigned i = 0; i < n_items; i++)
    {
        const uint64_t raw = be64(p + 8 + 8 * i);
        const uint64_t id = raw >> hab;
        if (id == (imm | 1))
            *cnt = raw & mask;
        else if (id == (imm | 3))
            *offset = raw & mask;
        else if (id == (imm | 4))
            *length = raw & mask;
    }
    return 8 + 8 * (size_t) n_items + *length;
}

/* Where heap c goes: slot c % (ring heaps) of a ring of n_chunks chunks. */
struct ring
{
    uint8_t *const *chunks;
    size_t heaps_per_chunk, ring_heaps, heap_size;
};

static struct ring make_ring_of(uint8_t *const *chunks, size_t n_chunks, size_t chunk_bytes, size_t heap_size)
{
    struct ring r = {chunks, chunk_bytes / heap_size, chunk_bytes / heap_size * n_chunks, heap_size};
    return r;
}

/* The bare receiver's work for the packet at p: its payload to its heap's
 * place.  Returns the packet's size. */
static inline size_t place_packet(const struct ring *r, const uint8_t *p)
{
    uint64_t cnt, offset, length;
    const size_t packet_size = parse_packet(p, &cnt, &offset, &length);
    if (offset + length <= r->heap_size)
    {
        const size_t slot = cnt % r->ring_heaps;
        const size_t chunk = slot / r->heaps_per_chunk;
        memcpy(r->chunks[chunk] + (slot - chunk * r->heaps_per_chunk) * r->heap_size + offset,
               p + packet_size - length, length);
    }
    return packet_size;
}

/* The bare receiver's loop over back-to-back packets in memory.  Returns the
 * number of packets.  Exported for bench_bare.py, which runs it beside
 * spead2's receiver in one process (built with -DFLOOR_LIBRARY). */
size_t floor_place(const uint8_t *data, size_t size, uint8_t *const *chunks, size_t n_chunks,
                   size_t chunk_bytes, size_t heap_size)
{
    const struct ring r = make_ring_of(chunks, n_chunks, chunk_bytes, heap_size);
    size_t pos = 0, n = 0;
    while (pos + 8 <= size)
    {
        pos += place_packet(&r, data + pos);
        n++;
    }
    return n;
}

/* The same from a classic pcap file of Ethernet/IPv4/UDP frames (as
 * bench_chunk.py writes them), read through a private mapping with nothing
 * done ahead: each record header, the IPv4 header length, then the packet.
 * Returns the number of packets, or 0 if the file cannot be mapped. */
size_t floor_place_pcap(const char *path, uint8_t *const *chunks, size_t n_chunks,
                        size_t chunk_bytes, size_t heap_size)
{
    const struct ring r = make_ring_of(chunks, n_chunks, chunk_bytes, heap_size);
    const int fd = open(path, O_RDONLY);
    if (fd < 0)
        return 0;
    struct stat st;
    if (fstat(fd, &st) != 0 || st.st_size < 24)
    {
        close(fd);
        return 0;
    }
    const size_t size = (size_t) st.st_size;
    const uint8_t *data = mmap(NULL, size, PROT_READ, MAP_PRIVATE, fd, 0);
    close(fd);
    if (data == MAP_FAILED)
        return 0;
    size_t pos = 24, n = 0;   /* after the global header */
    while (pos + 16 <= size)
    {
        uint32_t incl_len;
        memcpy(&incl_len, data + pos + 8, 4);   /* little-endian, as written */
        const uint8_t *frame = data + pos + 16;
        const size_t ip_header = (size_t) (frame[14] & 0x0f) * 4;
        place_packet(&r, frame + 14 + ip_header + 8);
        pos += 16 + incl_len;
        n++;
    }
    munmap((void *) data, size);
    return n;
}

#ifndef FLOOR_LIBRARY

static double seconds_now(void)
{
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return (double) t.tv_sec + 1e-9 * (double) t.tv_nsec;
}

static void die(const char *what)
{
    perror(what);
    exit(1);
}

/* Open path for reading; its size in *size. */
static int open_file(const char *path, size_t *size)
{
    int fd = open(path, O_RDONLY);
    if (fd < 0)
        die(path);
    struct stat st;
    if (fstat(fd, &st) != 0)
        die("fstat");
    *size = (size_t) st.st_size;
    return fd;
}

/* The whole file in anonymous memory (like bench_chunk.py's mem source). */
static uint8_t *load(const char *path, size_t *size)
{
    int fd = open_file(path, size);
    uint8_t *buf = malloc(*size);
    if (!buf)
        die("malloc");
    size_t got = 0;
    while (got < *size)
    {
        ssize_t r = read(fd, buf + got, *size - got);
        if (r <= 0)
            die("read");
        got += (size_t) r;
    }
    close(fd);
    return buf;
}

static uint8_t *make_ring(size_t chunk_bytes, size_t n_chunks)
{
    uint8_t *ring = aligned_alloc(4096, chunk_bytes * n_chunks);
    if (!ring)
        die("aligned_alloc");
    memset(ring, 0xff, chunk_bytes * n_chunks);   /* touched, like the benchmark's chunks */
    return ring;
}

/* Payload bytes and packet count of a file of back-to-back SPEAD packets. */
static void count_packets(const uint8_t *data, size_t size, size_t *payload, size_t *packets)
{
    size_t pos = 0;
    *payload = 0;
    *packets = 0;
    while (pos + 8 <= size)
    {
        uint64_t cnt, offset, length;
        pos += parse_packet(data + pos, &cnt, &offset, &length);
        *payload += length;
        (*packets)++;
    }
}

static int cmd_copy(const char *path, size_t chunk_bytes, size_t n_chunks)
{
    size_t size, payload, packets;
    uint8_t *data = load(path, &size);
    count_packets(data, size, &payload, &packets);
    uint8_t *ring = make_ring(chunk_bytes, n_chunks);
    const double start = seconds_now();
    size_t done = 0, i = 0;
    while (done < payload)
    {
        size_t n = chunk_bytes;
        if (n > payload - done)
            n = payload - done;
        memcpy(ring + (i % n_chunks) * chunk_bytes, data + done, n);
        done += n;
        i++;
    }
    printf("copy %.6f %zu\n", seconds_now() - start, packets);
    return ring[0] == 0x42;   /* keep the copies */
}

static int cmd_place(const char *path, size_t chunk_bytes, size_t n_chunks, size_t heap_size)
{
    size_t size, payload, packets;
    uint8_t *data = load(path, &size);
    count_packets(data, size, &payload, &packets);
    uint8_t *ring = make_ring(chunk_bytes, n_chunks);
    const size_t ring_heaps = chunk_bytes / heap_size * n_chunks;
    uint8_t **chunks = malloc(n_chunks * sizeof(*chunks));
    if (!chunks)
        die("malloc");
    for (size_t i = 0; i < n_chunks; i++)
        chunks[i] = ring + i * chunk_bytes;
    const double start = seconds_now();
    const size_t n = floor_place(data, size, chunks, n_chunks, chunk_bytes, heap_size);
    printf("place %.6f %zu\n", seconds_now() - start, n);
    /* Untimed check that the bare receiver really placed the heaps: the
     * traffic of bench_chunk.py numbers heaps from 1 and fills every payload
     * byte of heap c with c % 251, so the ring now holds the last
     * ring_heaps heaps, each whole, each in slot c % ring_heaps. */
    uint64_t last = 0;
    for (size_t q = 0; q + 8 <= size;)
    {
        uint64_t cnt, offset, length;
        q += parse_packet(data + q, &cnt, &offset, &length);
        last = cnt;
    }
    size_t checked = 0;
    for (uint64_t c = last >= ring_heaps ? last - ring_heaps + 1 : 1; c <= last; c++, checked++)
    {
        const uint8_t *h = ring + (c % ring_heaps) * heap_size;
        for (size_t b = 0; b < heap_size; b++)
            if (h[b] != (uint8_t) (c % 251))
            {
                fprintf(stderr, "floor place: heap %llu byte %zu is %u, expected %u\n",
                        (unsigned long long) c, b, h[b], (unsigned) (c % 251));
                return 3;
            }
    }
    printf("verified 0 %zu\n", checked);
    return 0;
}

static int cmd_map(const char *path)
{
    size_t size;
    int fd = open_file(path, &size);
    double start = seconds_now();
    void *map = mmap(NULL, size, PROT_READ, MAP_PRIVATE, fd, 0);
    if (map == MAP_FAILED)
        die("mmap");
    if (madvise(map, size, MADV_POPULATE_READ) != 0)
        die("madvise(MADV_POPULATE_READ)");
    printf("populate %.6f %zu\n", seconds_now() - start, size);
    munmap(map, size);
    const size_t block = (size_t) 4 << 20;
    uint8_t *buf = malloc(block);
    if (!buf)
        die("malloc");
    memset(buf, 0, block);
    start = seconds_now();
    if (lseek(fd, 0, SEEK_SET) != 0)
        die("lseek");
    size_t total = 0;
    for (;;)
    {
        ssize_t r = read(fd, buf, block);
        if (r < 0)
            die("read");
        if (r == 0)
            break;
        total += (size_t) r;
    }
    printf("read %.6f %zu\n", seconds_now() - start, total);
    close(fd);
    return 0;
}

int main(int argc, char **argv)
{
    if (argc == 5 && strcmp(argv[1], "copy") == 0)
        return cmd_copy(argv[2], strtoull(argv[3], NULL, 10), strtoull(argv[4], NULL, 10));
    if (argc == 6 && strcmp(argv[1], "place") == 0)
        return cmd_place(argv[2], strtoull(argv[3], NULL, 10), strtoull(argv[4], NULL, 10),
                         strtoull(argv[5], NULL, 10));
    if (argc == 3 && strcmp(argv[1], "map") == 0)
        return cmd_map(argv[2]);
    fprintf(stderr, "usage: floor copy FILE CHUNK_BYTES N_CHUNKS | place FILE CHUNK_BYTES N_CHUNKS HEAP_SIZE"
                    " | map FILE\n");
    return 2;
}

#endif /* FLOOR_LIBRARY */
