"""Traffic generators for tests: real protocol peers on loopback, captured with tcpdump."""
