// The extension module spead2._spead2.
#include "bindings/module.h"

PYBIND11_MODULE(_spead2, m)
{
    m.doc() = "Compiled core of spead2";
    spead2::bindings::register_common(m);
    spead2::bindings::register_memory(m);
    spead2::bindings::register_recv(m);
    spead2::bindings::register_send(m);
    spead2::bindings::register_send_ibv(m);
}
