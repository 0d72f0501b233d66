import ZramDaemon
