"""INA219 register math and the coinfer INA219 line protocol, shared by host and firmware.

This one file runs on both sides: the Pico firmware (``main.py``, MicroPython; copy this file
next to it) and the host drivers (``ina219-serial`` parses the lines, ``ina219-i2c`` reads the
registers over smbus2). So it stays MicroPython-compatible: no imports, no dataclasses, only
``%`` formatting, and integer register arithmetic exactly as the chip does it.

Registers (TI INA219 datasheet SBOS448, section 8.6), all 16-bit big-endian:

==== ============= ========================================================================
addr register      contents
==== ============= ========================================================================
0x00 configuration RST(15) BRNG(13: 0=16 V, 1=32 V) PG(12-11) BADC(10-7) SADC(6-3) MODE(2-0)
0x01 shunt voltage signed, 10 uV per count
0x02 bus voltage   BD(15-3) 4 mV per count, CNVR(1) conversion ready, OVF(0) math overflow
0x03 power         power_lsb per count (unsigned)
0x04 current       current_lsb per count (signed)
0x05 calibration   bit 0 is void (always 0)
==== ============= ========================================================================

Calibration (datasheet 8.5.1): ``current_lsb = max_current / 2**15``,
``cal = trunc(0.04096 / (current_lsb * shunt_ohm))``, ``power_lsb = 20 * current_lsb``.
The chip computes ``current = shunt * cal / 4096`` and ``power = current * bus / 5000`` in
register counts. A brown-out resets ``cal`` to 0 and the current to 0, hence the firmware
re-checks and re-writes it periodically.

Line protocol (device -> host, ``\\n``-terminated ASCII):

* ``t_us,bus_V,current_mA,power_mW*CCCC`` - one sample; ``t_us`` is the device's
  microsecond clock at the middle of the conversion; ``CCCC`` is the CRC-16/MODBUS of the
  text before ``*`` in upper-case hex.
* ``# text`` - information (banner, settings, re-calibration), no sample.
* ``! text`` - a fault the device saw (``! ovf``: math overflow, the sample was dropped).

Host -> device commands: ``rate HZ`` (sample rate), ``shunt OHMS MAX_A`` (re-calibrate),
``info`` (repeat the banner). The device answers each with a ``#`` line.
"""

# ruff: noqa: UP031 - %-formatting on purpose: the smallest, oldest-supported form in
# MicroPython builds, and the same text on host and device.

REG_CONFIG = 0x00
REG_SHUNT = 0x01
REG_BUS = 0x02
REG_POWER = 0x03
REG_CURRENT = 0x04
REG_CALIBRATION = 0x05

CONFIG_RESET = 0x8000  # RST bit
CONFIG_DEFAULT = 0x399F  # power-on value (32 V, /8 gain, 12-bit, continuous)
BRNG_32V = 0x2000
MODE_CONTINUOUS = 0x7  # shunt and bus, continuous
SHUNT_V_PER_COUNT = 10e-6  # V
BUS_V_PER_COUNT = 4e-3  # V
CAL_NUMERATOR = 0.04096  # datasheet equation 1
MAX_CAL = 0xFFFE

# PGA code -> shunt full scale in volts
PGA_RANGES_V = ((0, 0.040), (1, 0.080), (2, 0.160), (3, 0.320))
# ADC code -> (samples averaged, conversion time in us), datasheet table 5 (12-bit modes)
ADC_MODES = (
    (0x8, 1, 532), (0x9, 2, 1060), (0xA, 4, 2130), (0xB, 8, 4260),
    (0xC, 16, 8510), (0xD, 32, 17020), (0xE, 64, 34050), (0xF, 128, 68100),
)

LINE_BANNER = "# coinfer-ina219"
MAX_LINE_BYTES = 120


def calibration(shunt_ohm, max_current_a):
    """(cal register, current_lsb_a, power_lsb_w) for a shunt and the largest expected current.

    The LSBs are recomputed from the truncated, even ``cal`` so host scaling matches the chip.
    """
    if shunt_ohm <= 0 or max_current_a <= 0:
        raise ValueError("shunt_ohm and max_current_a must be > 0")
    current_lsb = max_current_a / 32768.0
    cal = int(CAL_NUMERATOR / (current_lsb * shunt_ohm))
    cal = min(cal, MAX_CAL) & 0xFFFE
    if cal < 2:
        raise ValueError("shunt too large for this current: calibration would be 0")
    current_lsb = CAL_NUMERATOR / (cal * shunt_ohm)
    return cal, current_lsb, 20.0 * current_lsb


def pga_code(shunt_ohm, max_current_a):
    """Smallest PGA code whose shunt full scale covers ``max_current_a * shunt_ohm``."""
    need_v = shunt_ohm * max_current_a
    for code, full_scale_v in PGA_RANGES_V:
        if need_v <= full_scale_v * 1.000001:  # 0.1 ohm x 0.4 A is 0.04 V, not 0.0400...1
            return code
    raise ValueError("shunt voltage %.3f V exceeds the 0.32 V full scale" % need_v)


def adc_for_period(period_us):
    """(ADC code, samples, conversion us) with the most averaging that fits one period.

    In continuous mode a bus and a shunt conversion alternate, so both must fit.
    """
    best = ADC_MODES[0]
    for mode in ADC_MODES:
        if 2 * mode[2] <= period_us:
            best = mode
    return best


def config_word(pga, adc, bus_32v=True):
    """Configuration register for continuous shunt+bus conversion with the same ADC mode."""
    word = (pga << 11) | (adc << 7) | (adc << 3) | MODE_CONTINUOUS
    if bus_32v:
        word |= BRNG_32V
    return word


def conversion_time_us(config):
    """Time of one shunt+bus conversion pair for a configuration word, in microseconds."""
    badc = (config >> 7) & 0xF
    sadc = (config >> 3) & 0xF
    return _adc_time_us(badc) + _adc_time_us(sadc)


def _adc_time_us(code):
    for mode in ADC_MODES:
        if mode[0] == code:
            return mode[2]
    return {0: 84, 1: 148, 2: 276, 3: 532}.get(code & 0x3, 532)


def signed16(raw):
    """Two's complement of a 16-bit register."""
    return raw - 0x10000 if raw & 0x8000 else raw


def decode_bus(raw):
    """(bus volts, conversion ready, math overflow) from the bus voltage register."""
    return (raw >> 3) * BUS_V_PER_COUNT, bool(raw & 0x2), bool(raw & 0x1)


def decode_shunt_v(raw):
    return signed16(raw) * SHUNT_V_PER_COUNT


def decode_current_a(raw, current_lsb_a):
    return signed16(raw) * current_lsb_a


def decode_power_w(raw, power_lsb_w):
    return raw * power_lsb_w


def crc16_modbus(data):
    """CRC-16/MODBUS of bytes: poly 0xA001 reflected, init 0xFFFF."""
    crc = 0xFFFF
    for b in data:
        crc ^= b
        for _ in range(8):
            crc = (crc >> 1) ^ 0xA001 if crc & 1 else crc >> 1
    return crc


def format_line(t_us, bus_v, current_ma, power_mw):
    """One sample line, newline included."""
    body = "%d,%.4f,%.3f,%.3f" % (t_us, bus_v, current_ma, power_mw)
    return "%s*%04X\n" % (body, crc16_modbus(body.encode()))


def parse_line(line):
    """(t_us, bus_v, current_ma, power_mw) from one sample line; ValueError if malformed."""
    line = line.strip()
    star = line.rfind("*")
    if star < 0 or len(line) - star != 5:
        raise ValueError("no checksum")
    body = line[:star]
    if int(line[star + 1 :], 16) != crc16_modbus(body.encode()):
        raise ValueError("checksum mismatch")
    parts = body.split(",")
    if len(parts) != 4:
        raise ValueError("expected 4 fields, got %d" % len(parts))
    return int(parts[0]), float(parts[1]), float(parts[2]), float(parts[3])
