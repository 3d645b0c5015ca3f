#!/usr/bin/env python3
"""Send heaps with ibverbs, the payload read by the NIC straight from a
registered buffer (no copy).

On a ConnectX NIC give the IPv4 address of its port::

    python examples/ibv_send.py 10.100.0.5

To try it without one, on the emulated test device (frames go to a pcap)::

    eval "$(python -m spead2.tools.ibv_emulator env --send-wire pcap:/tmp/ibv-send.pcap)"
    python examples/ibv_send.py 127.0.0.1
"""

import sys

import numpy as np

import spead2
import spead2.send

interface = sys.argv[1] if len(sys.argv) > 1 else "127.0.0.1"
n_heaps, heap_size = 8, 65536
# All the payload in one buffer, registered with the NIC as a memory region.
data = np.zeros((n_heaps, heap_size), np.uint8)
config = spead2.send.UdpIbvConfig(
    endpoints=[("239.102.0.1", 7148)],
    interface_address=interface,
    memory_regions=[data],
    ttl=4,
)
stream = spead2.send.UdpIbvStream(spead2.ThreadPool(), spead2.send.StreamConfig(rate=1e9), config)
item_group = spead2.send.ItemGroup()
item_group.add_item(0x1000, "timestamp", "", shape=(), format=[("u", 48)])
item_group.add_item(0x1001, "payload", "", shape=(heap_size,), dtype=np.uint8)
stream.send_heap(item_group.get_heap(descriptors="all", data="none"))
for i in range(n_heaps):
    data[i] = i % 256
    item_group["timestamp"].value = i * heap_size
    item_group["payload"].value = data[i]      # a view into the region: sent without a copy
    stream.send_heap(item_group.get_heap(descriptors="none", data="all"))
stream.send_heap(item_group.get_end())
print(f"sent {n_heaps} heaps of {heap_size} bytes from {interface}")
