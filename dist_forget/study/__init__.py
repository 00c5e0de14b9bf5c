"""End-to-end jobs built from the library: `make demo` and the micro-scale study."""
