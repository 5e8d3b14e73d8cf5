"""The C ABI: its header, the C reference implementation, building and loading libraries."""
