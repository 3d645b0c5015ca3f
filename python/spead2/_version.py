# The reference API level this package implements (spead2 4.5.1), then, as a
# local version label, this implementation's own release: programs that ask
# for spead2>=4.3 are satisfied by it and pip never swaps in the reference.
__version__ = "4.5.1+reimpl.0.2"
