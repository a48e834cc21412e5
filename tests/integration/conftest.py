"""Fixtures shared by the integration tests; the loopback board's live in board_fixture.py."""

from board_fixture import board_root, loopback_sshd, ssh_board, trusted_known_hosts  # noqa: F401
