"""The dump: its HDF5 format, records, the writer (and its background thread), the reader, listings."""
