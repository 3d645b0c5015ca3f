import numba.types

# The C struct a place callback receives (chunk_place_data) as a numba record,
# fields in C order: packet, packet_size, items, chunk_id, heap_index,
# heap_offset, batch_stats, extra, extra_offset, extra_size.
chunk_place_data: numba.types.Record
