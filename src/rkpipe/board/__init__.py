"""Boards: transports, runners and perf parsing."""
