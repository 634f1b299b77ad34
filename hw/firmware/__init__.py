"""Firmware shipped with coinfer: ``ina219.py`` + ``main.py`` for a Raspberry Pi Pico.

``ina219.py`` is also imported by the host drivers (register math and line protocol).
"""
