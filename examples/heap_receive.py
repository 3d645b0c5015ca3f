"""Send a few heaps through an in-process queue and receive them heap by heap.

Run it: ``python examples/heap_receive.py``.  It prints each heap's items as
decoded by :class:`spead2.ItemGroup`.
"""

import numpy as np

import spead2
import spead2.recv
import spead2.send

thread_pool = spead2.ThreadPool()
queue = spead2.InprocQueue()

# Sender: an item group with a counter, a 2-D array and a string.
sender = spead2.send.InprocStream(thread_pool, [queue], spead2.send.StreamConfig())
send_ig = spead2.send.ItemGroup()
send_ig.add_item(0x1000, "timestamp", "sample counter", (), format=[("u", 48)], value=0)
send_ig.add_item(0x1001, "spectrum", "power per channel", (4, 2), dtype=np.float32)
send_ig.add_item(0x1002, "source", "what we point at", (None,), format=[("c", 8)], value="Vela")
sender.send_heap(send_ig.get_start())
for i in range(3):
    send_ig["timestamp"].value = 1024 * i
    send_ig["spectrum"].value = np.full((4, 2), i, np.float32)
    sender.send_heap(send_ig.get_heap())
sender.send_heap(send_ig.get_end())
queue.stop()

# Receiver: a heap stream, decoding each heap into an item group.
stream = spead2.recv.Stream(thread_pool, spead2.recv.StreamConfig(max_heaps=4),
                            spead2.recv.RingStreamConfig(heaps=8))
stream.add_inproc_reader(queue)
ig = spead2.ItemGroup()
for heap in stream:
    if heap.is_start_of_stream():
        print("start of stream")
    for name, item in sorted(ig.update(heap).items()):
        print(f"heap {heap.cnt}: {name} = {item.value!r}".replace("\n", " "))
print("heaps received:", stream.stats["heaps"])
