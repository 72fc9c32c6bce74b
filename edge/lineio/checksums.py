"""Checksums of the serial protocols: CRC-16/MODBUS, Modbus ASCII LRC, byte sums and XOR."""

from __future__ import annotations


def crc16_modbus(data: bytes) -> bytes:
    """CRC-16/MODBUS of `data` (reflected polynomial 0xA001, initial 0xFFFF), low byte first.

    `crc16_modbus(bytes.fromhex("010500130000"))` is the two bytes a Modbus RTU frame ends with.
    """
    crc = 0xFFFF
    for byte in data:
        crc ^= byte
        for _ in range(8):
            crc = (crc >> 1) ^ 0xA001 if crc & 1 else crc >> 1
    return crc.to_bytes(2, "little")


def lrc_modbus(data: bytes) -> int:
    """Modbus ASCII longitudinal redundancy check: the two's complement of the byte sum."""
    return (-sum(data)) & 0xFF


def sum8(data: bytes) -> int:
    """Low byte of the sum of all bytes."""
    return sum(data) & 0xFF


def xor8(data: bytes) -> int:
    """XOR of all bytes."""
    value = 0
    for byte in data:
        value ^= byte
    return value


def sum8_hex(data: bytes) -> bytes:
    """Low byte of the byte sum as two uppercase hex digits, as CCS-style controllers frame commands."""
    return f"{sum8(data):02X}".encode("ascii")
