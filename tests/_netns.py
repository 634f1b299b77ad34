"""The two-host rig (network namespaces and a veth pair) lives in the package, where
``ondevice bench ahead`` uses it too; the tests import it from here."""

from ondevice.bench._netns import Host, NetnsUnavailable, check_available, two_hosts

__all__ = ["Host", "NetnsUnavailable", "check_available", "two_hosts"]
