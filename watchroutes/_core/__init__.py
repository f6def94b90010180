"""The sans-IO core: no awaits, no clocks, no sockets, no threads, no frameworks.

Only the standard library, msgspec and typing-extensions are imported here;
``tests/core/test_purity.py`` fails the build otherwise.
"""
