"""coinfer INA219 bridge: MicroPython firmware for a Raspberry Pi Pico.

Copy ``ina219.py`` and this file (as ``main.py``) to the Pico; it then streams one line per
sample over the USB serial port (see ``ina219.py`` for the line protocol and docs/meters.md
for wiring and flashing). Settings below are the defaults; the host can change the rate and
the shunt at run time with the ``rate`` and ``shunt`` commands.

The sampling logic lives in :class:`Bridge`, which takes the I2C bus, the clock and the
output as arguments, so the same code runs on the Pico (``main()``) and on a host against
an emulated INA219 in the tests.
"""

# ruff: noqa: UP031 - %-formatting on purpose: the smallest, oldest-supported form in
# MicroPython builds, and the same text on host and device.

try:
    import ina219  # on the Pico: copied next to main.py
except ImportError:  # on the host (tests, docs): the same file inside the hw package
    from hw.firmware import ina219

I2C_ID = 0  # Pico I2C0
SDA_PIN = 4  # GP4, physical pin 6
SCL_PIN = 5  # GP5, physical pin 7
I2C_FREQ_HZ = 400000
ADDR = 0x40  # A0 and A1 to GND
SHUNT_OHM = 0.1  # the R100 on common INA219 breakout boards
MAX_CURRENT_A = 3.2  # 0.32 V / 0.1 ohm: the PGA's widest range
RATE_HZ = 50
CAL_CHECK_MS = 1000  # check configuration and re-write calibration this often (brown-out)
CAL_LOST_SHUNT_COUNTS = 50  # shunt counts (0.5 mV) with a zero current register => cal lost
FIRMWARE_VERSION = 1


class Bridge:
    """Configures the INA219 and turns conversions into protocol lines.

    ``i2c`` offers MicroPython's ``readfrom_mem(addr, reg, n)`` and
    ``writeto_mem(addr, reg, buf)``; ``ticks_us``/``ticks_diff`` are MicroPython's
    ``time.ticks_us``/``time.ticks_diff`` (wrapping clock); :meth:`step` returns the line to
    send, or ``None`` when no sample is due or the conversion is not ready yet.
    """

    def __init__(self, i2c, ticks_us, ticks_diff, addr=ADDR, shunt_ohm=SHUNT_OHM,
                 max_current_a=MAX_CURRENT_A, rate_hz=RATE_HZ):
        self.i2c = i2c
        self.addr = addr
        self.ticks_us = ticks_us
        self.ticks_diff = ticks_diff
        self._last_ticks = ticks_us()
        self.origin_ticks = self._last_ticks  # ticks_us() when t_us was 0
        self.t_us = 0  # unwrapped device clock, us since origin_ticks
        self.shunt_ohm = shunt_ohm
        self.max_current_a = max_current_a
        self.rate_hz = rate_hz
        self.next_due_us = 0
        self.armed = False
        self.last_check_us = 0
        self.recalibrations = 0
        self.configure()

    # -- chip setup ----------------------------------------------------------------------

    def configure(self):
        pga = ina219.pga_code(self.shunt_ohm, self.max_current_a)
        self.period_us = int(1000000 / self.rate_hz)
        adc = ina219.adc_for_period(self.period_us)
        self.config = ina219.config_word(pga, adc[0])
        self.conv_us = ina219.conversion_time_us(self.config)
        self.cal, self.current_lsb, self.power_lsb = ina219.calibration(
            self.shunt_ohm, self.max_current_a)
        self._write(ina219.REG_CONFIG, self.config)
        self._write(ina219.REG_CALIBRATION, self.cal)
        self.armed = False

    def banner(self):
        return "%s v%d rate_hz=%g shunt_ohm=%g max_a=%g cal=%d avg=%d\n" % (
            ina219.LINE_BANNER, FIRMWARE_VERSION, self.rate_hz, self.shunt_ohm,
            self.max_current_a, self.cal, ina219.adc_for_period(self.period_us)[1])

    def _write(self, reg, value):
        self.i2c.writeto_mem(self.addr, reg, bytes(((value >> 8) & 0xFF, value & 0xFF)))

    def _read(self, reg):
        b = self.i2c.readfrom_mem(self.addr, reg, 2)
        return (b[0] << 8) | b[1]

    # -- host commands -------------------------------------------------------------------

    def command(self, line):
        """Apply one host command; returns the reply line."""
        parts = line.split()
        try:
            if parts and parts[0] == "rate" and len(parts) == 2:
                rate = float(parts[1])
                if not 0.1 <= rate <= 1000:
                    raise ValueError("rate out of range")
                self.rate_hz = rate
            elif parts and parts[0] == "shunt" and len(parts) == 3:
                shunt, max_a = float(parts[1]), float(parts[2])
                ina219.pga_code(shunt, max_a)
                ina219.calibration(shunt, max_a)
                self.shunt_ohm, self.max_current_a = shunt, max_a
            elif not (parts and parts[0] == "info"):
                return "! unknown command %r\n" % line
            self.configure()
            return self.banner()
        except ValueError as err:
            return "! %s\n" % err

    # -- sampling ------------------------------------------------------------------------

    def _clock(self):
        now = self.ticks_us()
        self.t_us += self.ticks_diff(now, self._last_ticks)
        self._last_ticks = now
        return self.t_us

    def step(self):
        """One pass of the main loop: a line to send, or None."""
        t = self._clock()
        if t - self.last_check_us >= CAL_CHECK_MS * 1000:
            self.last_check_us = t
            if self._read(ina219.REG_CONFIG) != self.config or \
                    self._read(ina219.REG_CALIBRATION) != self.cal:
                return self._recalibrate("registers lost (reset?)")
            # Periodic refresh: a supply glitch can clear the calibration between checks.
            # Writing it does not restart a conversion (a configuration write would).
            self._write(ina219.REG_CALIBRATION, self.cal)
        if t < self.next_due_us:
            return None
        if not self.armed:
            # Clear CNVR so the sample comes from a conversion that ends after this instant,
            # which makes its timestamp exact to one loop pass.
            self._read(ina219.REG_POWER)
            self.armed = True
            return None
        bus_v, ready, overflow = ina219.decode_bus(self._read(ina219.REG_BUS))
        if not ready:
            return None
        shunt_raw = self._read(ina219.REG_SHUNT)
        current_raw = self._read(ina219.REG_CURRENT)
        power_raw = self._read(ina219.REG_POWER)  # reading power clears CNVR
        self.armed = False
        self.next_due_us += self.period_us
        if self.next_due_us <= t:  # fell behind (or first sample): restart the rhythm
            self.next_due_us = t + self.period_us
        if overflow:
            return "! ovf %d\n" % t
        if current_raw == 0 and abs(ina219.signed16(shunt_raw)) > CAL_LOST_SHUNT_COUNTS:
            return self._recalibrate("current 0 with shunt voltage: calibration lost")
        # The conversion averaged the last conv_us: stamp its middle.
        t_mid = t - self.conv_us // 2
        current_ma = ina219.decode_current_a(current_raw, self.current_lsb) * 1000.0
        power_mw = ina219.decode_power_w(power_raw, self.power_lsb) * 1000.0
        return ina219.format_line(t_mid, bus_v, current_ma, power_mw)

    def _recalibrate(self, why):
        self.recalibrations += 1
        self.configure()
        return "# recalibrated: %s\n" % why


def main():  # pragma: no cover - runs on the Pico only
    import select
    import sys
    import time

    from machine import I2C, Pin

    i2c = I2C(I2C_ID, sda=Pin(SDA_PIN), scl=Pin(SCL_PIN), freq=I2C_FREQ_HZ)
    bridge = Bridge(i2c, time.ticks_us, time.ticks_diff)
    poller = select.poll()
    poller.register(sys.stdin, select.POLLIN)
    out = sys.stdout
    out.write(bridge.banner())
    command = ""
    while True:
        while poller.poll(0):
            ch = sys.stdin.read(1)
            if ch in ("\n", "\r"):
                if command:
                    out.write(bridge.command(command))
                command = ""
            elif len(command) < ina219.MAX_LINE_BYTES:
                command += ch
        line = bridge.step()
        if line is not None:
            out.write(line)
        else:
            time.sleep_us(200)


if __name__ == "__main__":
    main()
