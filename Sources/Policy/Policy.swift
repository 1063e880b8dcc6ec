// The auto-protect policy: /etc/snapstack/snapstack.conf, rules over udev properties.
