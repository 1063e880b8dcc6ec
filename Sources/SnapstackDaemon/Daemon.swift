// `snapstack daemon`: boot-time reconcile, udev hotplug, store watch, sd_notify.
