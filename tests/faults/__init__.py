"""Fault-test machinery: processes we can kill, receivers that count, a TCP proxy we can cut."""
