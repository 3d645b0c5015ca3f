from typing import Any

# A numba intrinsic, callable from jitted code only: the address in an intp
# as a void pointer.
def intp_to_voidptr(src: Any) -> Any: ...
